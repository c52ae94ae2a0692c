-- Recipe step 7: CREATE STREAM SYSMON_JOIN AS SELECT N.*, P.PROCESS_COMMAND_LINE, ... FROM SYSMON_NETWORK_CONNECT N
-- INNER JOIN SYSMON_PROCESS_CREATE_TABLE P ON N.PROCESS_GUID = P.PROCESS_GUID.
-- Default mode: each new connection joins the table as it stands at the end of its batch; a connection whose
-- process create has not arrived yet is retried in later batches for join_grace_minutes of batch time.
-- join_mode='ksql': a connection joins only the create that arrived before it (as-of join); no retry.
{#- as_of: the join of the table is an as-of join to the stream it is built from (dbt_like/compiler.py). -#}
{{ config(materialized='stream',
          as_of=({'sysmon_process_create_table': ref('sysmon_process_create', full=True)} if var('join_mode') == 'ksql' else none),
          retry_unmatched=(none if var('join_mode') == 'ksql' else 'sysmon_network_connect'),
          retry_grace_minutes=var('join_grace_minutes')) }}
SELECT
    n.event_date_creation,
    n.process_guid,
    n.process_id,
    n.process_path,
    n.user_account,
    n.network_protocol,
    n.network_connection_initiated,
    n.src_is_ipv6,
    n.src_ip_addr,
    n.src_host_name,
    n.src_port,
    n.src_port_name,
    n.dst_is_ipv6,
    n.dst_ip_addr,
    n.dst_host_name,
    n.dst_port,
    n.dst_port_name,
    n.source_name,
    n.log_name,
    p.process_command_line,
    p.hashes,
    p.parent_process_path,
    p.parent_process_command_line,
    p.user_logon_guid,
    p.user_logon_id,
    p.user_session_id,
    p.process_current_directory,
    p.process_integrity_level,
    p.parent_process_guid,
    p.parent_process_id,
    n._seq
FROM {{ ref('sysmon_network_connect') }} AS n
INNER JOIN {{ ref('sysmon_process_create_table') }} AS p
    ON n.process_guid = p.process_guid
