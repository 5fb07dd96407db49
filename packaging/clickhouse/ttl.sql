-- depmap ClickHouse retention: delete rows 30 days after their TimeGenerated.
--
-- ONLY for ClickHouse servers that support table TTL (19.6 and later, i.e. every current
-- release). ClickHouse 18.16 (Debian 12's clickhouse-server package) rejects TTL with
-- "Code: 62 ... Syntax error", so this is kept out of schema.sql. On 18.16, drop old daily
-- partitions instead (README.md, "Retention").
--
-- Apply after schema.sql, the same way (one statement per HTTP POST, or
-- clickhouse-client --multiquery < ttl.sql). Re-applying it is harmless. Change the interval
-- to taste. The only semicolons in this file end statements.
-- With daily partitions, whole expired partitions are dropped cheaply
-- (ttl_only_drop_parts would make that the only mechanism. Not set here, to keep the
-- statements valid on every TTL-capable version).

ALTER TABLE depmap.VMConnection MODIFY TTL TimeGenerated + INTERVAL 30 DAY;
ALTER TABLE depmap.VMBoundPort MODIFY TTL TimeGenerated + INTERVAL 30 DAY;
ALTER TABLE depmap.VMProcess MODIFY TTL TimeGenerated + INTERVAL 30 DAY;
ALTER TABLE depmap.VMComputer MODIFY TTL TimeGenerated + INTERVAL 30 DAY;
