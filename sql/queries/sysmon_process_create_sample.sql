-- Recipe step 4, "optionally query a sample": SELECT PROCESS_PATH, FILE_DESCRIPTION, USER_ACCOUNT
-- FROM SYSMON_PROCESS_CREATE LIMIT 2;
SELECT process_path, file_description, user_account
FROM sysmon_process_create
LIMIT 2;
