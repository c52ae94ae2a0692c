-- Recipe step 7, "optionally query a sample": SELECT TIMESTAMPTOSTRING(ROWTIME, 'yyyy-MM-dd HH:mm:ss'), SRC_HOST_NAME,
-- DST_IP_ADDR, PROCESS_COMMAND_LINE, PARENT_PROCESS_COMMAND_LINE, N_USER_ACCOUNT FROM SYSMON_JOIN;
-- ROWTIME is event_date_creation (the recipe's TIMESTAMP='event_date_creation'); N_USER_ACCOUNT is user_account here.
-- KSQL prints every row as it arrives, with no LIMIT: so here every row, in arrival order (_seq). Ordering by time
-- with a LIMIT would put a late host's earlier events first and cut off the rows the recipe prints.
SELECT strftime(event_date_creation, '%Y-%m-%d %H:%M:%S') AS event_time, src_host_name, dst_ip_addr,
       process_command_line, parent_process_command_line, user_account
FROM sysmon_join
ORDER BY _seq;
