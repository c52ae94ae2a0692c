-- Recipe step 2, "optionally query a sample": SELECT SOURCE_NAME, COMPUTER_NAME, EVENT_DATA->PARENTIMAGE,
-- EVENT_DATA->PRODUCT FROM WINLOGBEAT_STREAM WHERE EVENT_ID = 1 OR EVENT_ID = 3 LIMIT 2;
-- KSQL prints the first rows in arrival order: ORDER BY _seq makes that so here (a LIMIT alone picks any rows).
SELECT source_name, computer_name, event_data.ParentImage, event_data.Product
FROM winlogbeat_stream
WHERE event_id = 1 OR event_id = 3
ORDER BY _seq
LIMIT 2;
