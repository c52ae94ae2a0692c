-- Recipe step 4, "optionally query a sample": SELECT PROCESS_PATH, FILE_DESCRIPTION, USER_ACCOUNT
-- FROM SYSMON_PROCESS_CREATE LIMIT 2;
-- KSQL prints the first rows in arrival order: ORDER BY _seq makes that so here (a LIMIT alone picks any rows).
SELECT process_path, file_description, user_account
FROM sysmon_process_create
ORDER BY _seq
LIMIT 2;
