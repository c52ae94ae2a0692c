-- Not a recipe step: every sysmon_join row (a connection enriched with its process create) with the chain of
-- ancestors of the process that opened it, from sysmon_process_ancestry, as a view: it always shows the chain as
-- that table holds it now, so an ancestor that arrives after the connection shows here once its batch commits.
-- connection_lineage reads like 'explorer.exe > cmd.exe > powershell.exe -> 203.0.113.7:443'.
{{ config(materialized='view', group='hunting') }}
SELECT
    j.event_date_creation,
    j.process_guid,
    j.process_id,
    j.process_path,
    j.user_account,
    j.network_protocol,
    j.network_connection_initiated,
    j.src_is_ipv6,
    j.src_ip_addr,
    j.src_host_name,
    j.src_port,
    j.src_port_name,
    j.dst_is_ipv6,
    j.dst_ip_addr,
    j.dst_host_name,
    j.dst_port,
    j.dst_port_name,
    j.source_name,
    j.log_name,
    j.process_command_line,
    j.hashes,
    j.parent_process_path,
    j.parent_process_command_line,
    j.user_logon_guid,
    j.user_logon_id,
    j.user_session_id,
    j.process_current_directory,
    j.process_integrity_level,
    j.parent_process_guid,
    j.parent_process_id,
    a.ancestors,
    a.depth,
    a.chain_end,
    a.lineage,
    -- an IPv6 address (its text holds colons) is bracketed so that its port stays readable, as in a URL; '?' for a
    -- field the event lacked
    a.lineage || ' -> '
        || CASE WHEN contains(j.dst_ip_addr, ':') THEN '[' || j.dst_ip_addr || ']' ELSE coalesce(j.dst_ip_addr, '?') END
        || ':' || coalesce(CAST(j.dst_port AS VARCHAR), '?') AS connection_lineage,
    j._seq,
    j._batch_id
FROM {{ ref('sysmon_join') }} AS j
-- a left join: a connection is never hidden, even in the moment (with shards) before its process's row lands
LEFT JOIN {{ ref('sysmon_process_ancestry') }} AS a ON a.process_guid = j.process_guid
