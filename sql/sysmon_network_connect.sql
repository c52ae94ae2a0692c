-- Recipe step 6: CREATE STREAM SYSMON_NETWORK_CONNECT AS SELECT ... FROM WINLOGBEAT_STREAM_REKEY WHERE event_id=3.
-- Sysmon NetworkConnect events, with the process and the connection's endpoints.
{{ config(materialized='stream') }}
SELECT
    event_date_creation,
    process_guid,
    process_id,
    process_path,
    user_account,
    network_protocol,
    network_connection_initiated,
    src_is_ipv6,
    src_ip_addr,
    src_host_name,
    src_port,
    src_port_name,
    dst_is_ipv6,
    dst_ip_addr,
    dst_host_name,
    dst_port,
    dst_port_name,
    event_id,
    source_name,
    log_name,
    _seq
FROM {{ ref('winlogbeat_stream_rekey') }}
WHERE event_id = 3
