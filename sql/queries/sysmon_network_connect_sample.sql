-- Recipe step 6, "optionally query a sample": SELECT PROCESS_PATH, SRC_HOST_NAME, DST_IP_ADDR
-- FROM SYSMON_NETWORK_CONNECT LIMIT 2;
-- KSQL prints the first rows in arrival order: ORDER BY _seq makes that so here (a LIMIT alone picks any rows).
SELECT process_path, src_host_name, dst_ip_addr
FROM sysmon_network_connect
ORDER BY _seq
LIMIT 2;
