-- The dependency map in SQL (README "The map", packaging/clickhouse/README.md): the edges and
-- nodes that `depmap map` draws, per window, so that a query over a time range sums them.
-- Grafana's Node Graph panel reads the frames of packaging/grafana/depmap-map.json from these.
-- Valid on ClickHouse 18.16 (Debian 12's package: no CTEs, no parameterized views, JOIN ...
-- USING only) and current ClickHouse. Apply after schema.sql, one statement per request.
--
-- An outbound connection's far end, as depmap map finds it: the machine owning its remote
-- address (VMComputer addresses and the machines' own local addresses, loopback: the same
-- machine), then the process bound there to that address or the wildcard and that port,
-- else "<machine>/unknown", else the remote endpoint "remote:<ip>:<port>". Inbound
-- connections from addresses of no machine become client groups "clients:<process>:<port>".
-- Ids are those of `depmap map --format json`. Not done here (the command does them): DNS
-- names of remote endpoints, folding of idle processes and subnets, and leaving out inbound
-- connections of machines outside a chosen group.

-- Which machine an address belongs to (loopback and wildcard addresses belong to none).
CREATE VIEW IF NOT EXISTS depmap.map_machine_addresses AS
SELECT Ip, any(Machine) AS IpMachine
FROM
(
    SELECT Machine, arrayJoin(arrayConcat(Ipv4Addresses, Ipv6Addresses)) AS Ip FROM depmap.VMComputer
    UNION ALL
    SELECT Machine, SourceIp AS Ip FROM depmap.VMConnection WHERE Direction = 'outbound'
    UNION ALL
    SELECT Machine, DestinationIp AS Ip FROM depmap.VMConnection WHERE Direction = 'inbound'
)
WHERE NOT (Ip LIKE '127.%' OR Ip IN ('::1', '0.0.0.0', '::', ''))
GROUP BY Ip;

-- The process listening on each (machine, address, port, protocol), the latest record's.
CREATE VIEW IF NOT EXISTS depmap.map_listeners AS
SELECT
    Machine AS FarMachine,
    Ip AS ListenIp,
    Port AS DestinationPort,
    if(Protocol = '', 'tcp', Protocol) AS Proto,
    argMax(ifNull(Process, ''), TimeGenerated) AS Server
FROM depmap.VMBoundPort
GROUP BY FarMachine, ListenIp, DestinationPort, Proto;

-- Edges per window: TimeGenerated, source, target, port, protocol and the window's sums.
CREATE VIEW IF NOT EXISTS depmap.map_edges_by_window AS
SELECT
    TimeGenerated,
    ifNull(Process, concat(Machine, '/unknown')) AS source,
    if(Exact != '', Exact, if(Wildcard != '', Wildcard,
        if(FarMachine != '', concat(FarMachine, '/unknown'),
            concat('remote:', DestinationIp, ':', toString(DestinationPort))))) AS target,
    DestinationPort AS port,
    Proto AS protocol,
    LinksEstablished AS links,
    ifNull(LinksFailed, 0) AS failed,
    LinksLive AS live,
    BytesSent AS sent,
    BytesReceived AS received,
    ifNull(Responses, 0) AS responses,
    ifNull(ResponseTimeSum, 0) AS response_time_sum,
    isNotNull(MaliciousIp) AS malicious
FROM
(
    SELECT *
    FROM
    (
        SELECT *
        FROM
        (
            -- The machine owning the remote address (loopback: this one).
            SELECT *, if(LoopMachine != '', LoopMachine, IpMachine) AS FarMachine
            FROM
            (
                SELECT
                    *,
                    if(Protocol = '', 'tcp', Protocol) AS Proto,
                    DestinationIp AS ListenIp,
                    if(DestinationIp LIKE '127.%' OR DestinationIp = '::1', Machine, '') AS LoopMachine
                FROM depmap.VMConnection
                WHERE Direction = 'outbound'
            )
            ANY LEFT JOIN (SELECT Ip AS DestinationIp, IpMachine FROM depmap.map_machine_addresses) USING (DestinationIp)
        )
        -- Its process bound to that very address and port,
        ANY LEFT JOIN
        (
            SELECT FarMachine, ListenIp, DestinationPort, Proto, Server AS Exact FROM depmap.map_listeners
        ) USING (FarMachine, ListenIp, DestinationPort, Proto)
    )
    -- or to the wildcard.
    ANY LEFT JOIN
    (
        SELECT FarMachine, DestinationPort, Proto, any(Server) AS Wildcard
        FROM depmap.map_listeners
        WHERE ListenIp IN ('0.0.0.0', '::')
        GROUP BY FarMachine, DestinationPort, Proto
    ) USING (FarMachine, DestinationPort, Proto)
)
UNION ALL
SELECT
    TimeGenerated,
    concat('clients:', ifNull(Process, concat(Machine, '/unknown')), ':', toString(DestinationPort)) AS source,
    ifNull(Process, concat(Machine, '/unknown')) AS target,
    DestinationPort AS port,
    if(Protocol = '', 'tcp', Protocol) AS protocol,
    LinksEstablished AS links,
    ifNull(LinksFailed, 0) AS failed,
    LinksLive AS live,
    BytesSent AS sent,
    BytesReceived AS received,
    ifNull(Responses, 0) AS responses,
    ifNull(ResponseTimeSum, 0) AS response_time_sum,
    isNotNull(MaliciousIp) AS malicious
FROM
(
    SELECT *
    FROM (SELECT *, SourceIp AS Ip FROM depmap.VMConnection WHERE Direction = 'inbound')
    ANY LEFT JOIN depmap.map_machine_addresses USING (Ip)
)
WHERE IpMachine = '' AND NOT (SourceIp LIKE '127.%' OR SourceIp = '::1');

-- Node titles: a process's executable name and machine (the latest inventory record's), the
-- nodes frame is the edges' ends with these (packaging/grafana/depmap-map.json).
CREATE VIEW IF NOT EXISTS depmap.map_node_titles AS
SELECT
    Process AS id,
    argMax(ExecutableName, TimeGenerated) AS title,
    argMax(Machine, TimeGenerated) AS machine
FROM depmap.VMProcess
GROUP BY id;
