-- depmap ClickHouse schema: database `depmap` and the four VM Insights Map tables.
--
-- Accepts depmap's records unmodified (all columns, `Type` included) with
--   INSERT INTO depmap.<Type> FORMAT JSONEachRow
-- sent with the setting date_time_input_format=best_effort (see README.md).
--
-- Valid on ClickHouse 18.16 (Debian 12's package) and on current ClickHouse.
-- Retention: 18.16 has no TTL, so none is declared here. On ClickHouse that has TTL, apply
-- ttl.sql after this file. On 18.16, drop old daily partitions (README.md, "Retention").
--
-- Running it:
--   * clickhouse-client --multiquery < schema.sql
--   * or over HTTP, one statement per POST (the HTTP interface refuses several statements
--     in one request): split this file at semicolons. The only semicolons in this file end
--     statements (never inside a comment or a string), so a plain split is safe. Comment
--     lines may be sent along with a statement or dropped.
-- Every statement is idempotent (IF NOT EXISTS, and the ALTERs change a column once).
--
-- Type mapping (from src/records/tables.rs):
--   String -> String, Option<String> -> Nullable(String),
--   i64 -> Int64, i32 -> Int32 (and Option<_> -> Nullable(_)), Option<f64> -> Nullable(Float64),
--   bool -> UInt8 (JSON true/false are read as 1/0, and 18.16 has no Bool type),
--   Vec<String> (Azure `dynamic`) -> Array(String),
--   Option<Vec<String>> (VMProcess.Services) -> Array(String): arrays cannot be Nullable, so
--     an empty array stands for null (see README.md: the sink must omit a null Services on
--     18.16),
--   datetime strings ("2026-11-25T12:34:00.000Z") -> DateTime('UTC') (whole seconds:
--     milliseconds are dropped), Nullable(DateTime('UTC')) where the record may hold null.
--   BytesSent / BytesReceived are Option<i64>: null where not measured (UDP without the
--     event source's flow counters), so Nullable(Int64). A table an earlier schema made with
--     Int64 is changed by the ALTER statements after each CREATE (a no-op when already
--     Nullable, and on a large table ClickHouse rewrites those two columns once).
--   FirstReportedDateTime / LastReportedDateTime / IsActive are `string` in Azure's VMConnection
--   and Option<String> in depmap, so they stay Nullable(String).
--   RemoteDnsQuestions / RemoteDnsCanonicalNames hold JSON text: Nullable(String)
--   (query with JSONExtract... / visitParam... functions).
--
-- Layout: MergeTree, one partition per UTC day of TimeGenerated (cheap retention by dropping
-- partitions), sorted by (Machine, TimeGenerated): per-machine time-range queries read little.

CREATE DATABASE IF NOT EXISTS depmap;

CREATE TABLE IF NOT EXISTS depmap.VMConnection
(
    AgentId String,
    BytesReceived Nullable(Int64),
    BytesSent Nullable(Int64),
    Computer String,
    Confidence Nullable(String),
    ConnectionId String,
    Description Nullable(String),
    DestinationIp String,
    DestinationPort Int32,
    Direction String,
    FirstReportedDateTime Nullable(String),
    IndicatorThreatType Nullable(String),
    IsActive Nullable(String),
    LastReportedDateTime Nullable(String),
    LinksEstablished Int64,
    LinksFailed Nullable(Int64),
    LinksLive Int64,
    LinksTerminated Int64,
    Machine String,
    MaliciousIp Nullable(String),
    Process Nullable(String),
    ProcessName Nullable(String),
    Protocol String,
    RemoteClassification Nullable(String),
    RemoteCountry Nullable(String),
    RemoteDnsCanonicalNames Nullable(String),
    RemoteDnsQuestions Nullable(String),
    RemoteIp String,
    RemoteLatitude Nullable(Float64),
    RemoteLongitude Nullable(Float64),
    `_ResourceId` String,
    Responses Nullable(Int64),
    ResponseTimeMax Nullable(Int64),
    ResponseTimeMin Nullable(Int64),
    ResponseTimeSum Nullable(Int64),
    Severity Nullable(Int32),
    SourceIp String,
    SourceSystem String,
    TimeGenerated DateTime('UTC'),
    TLPLevel Nullable(String),
    `Type` String
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(TimeGenerated)
ORDER BY (Machine, TimeGenerated);

ALTER TABLE depmap.VMConnection MODIFY COLUMN BytesReceived Nullable(Int64);
ALTER TABLE depmap.VMConnection MODIFY COLUMN BytesSent Nullable(Int64);

CREATE TABLE IF NOT EXISTS depmap.VMBoundPort
(
    AgentId String,
    BytesReceived Nullable(Int64),
    BytesSent Nullable(Int64),
    Computer String,
    Ip String,
    IsWildcardBind UInt8,
    LinksEstablished Int64,
    LinksLive Int64,
    LinksTerminated Int64,
    Machine String,
    Port Int32,
    PortId String,
    Process Nullable(String),
    ProcessName Nullable(String),
    Protocol String,
    `_ResourceId` String,
    Responses Nullable(Int64),
    ResponseTimeMax Nullable(Int64),
    ResponseTimeMin Nullable(Int64),
    ResponseTimeSum Nullable(Int64),
    SourceSystem String,
    TimeGenerated DateTime('UTC'),
    `Type` String
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(TimeGenerated)
ORDER BY (Machine, TimeGenerated);

ALTER TABLE depmap.VMBoundPort MODIFY COLUMN BytesReceived Nullable(Int64);
ALTER TABLE depmap.VMBoundPort MODIFY COLUMN BytesSent Nullable(Int64);

CREATE TABLE IF NOT EXISTS depmap.VMProcess
(
    AgentId String,
    CommandLine String,
    CompanyName Nullable(String),
    Computer String,
    Description Nullable(String),
    DisplayName String,
    ExecutableName String,
    ExecutablePath Nullable(String),
    FileVersion Nullable(String),
    FirstPid Nullable(Int32),
    `Group` Nullable(String),
    InternalName Nullable(String),
    Machine String,
    Process String,
    ProductName Nullable(String),
    ProductVersion Nullable(String),
    `_ResourceId` String,
    Role Nullable(String),
    Services Array(String),
    SourceSystem String,
    StartTime Nullable(DateTime('UTC')),
    TimeGenerated DateTime('UTC'),
    `Type` String,
    UserDomain Nullable(String),
    UserName String,
    WorkingDirectory Nullable(String)
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(TimeGenerated)
ORDER BY (Machine, TimeGenerated);

CREATE TABLE IF NOT EXISTS depmap.VMComputer
(
    AgentId String,
    AzureCloudServiceDeployment Nullable(String),
    AzureCloudServiceInstanceId Nullable(String),
    AzureCloudServiceName Nullable(String),
    AzureCloudServiceRoleName Nullable(String),
    AzureCloudServiceRoleType Nullable(String),
    AzureFaultDomain Nullable(String),
    AzureImageOffering Nullable(String),
    AzureImagePublisher Nullable(String),
    AzureImageSku Nullable(String),
    AzureImageVersion Nullable(String),
    AzureLocation Nullable(String),
    AzureResourceGroup Nullable(String),
    AzureResourceName Nullable(String),
    AzureServiceFabricClusterId Nullable(String),
    AzureServiceFabricClusterName Nullable(String),
    AzureSize Nullable(String),
    AzureSubscriptionId Nullable(String),
    AzureUpdateDomain Nullable(String),
    AzureVmId Nullable(String),
    AzureVmScaleSetDeployment Nullable(String),
    AzureVmScaleSetInstanceId Nullable(String),
    AzureVmScaleSetName Nullable(String),
    AzureVmScaleSetResourceId Nullable(String),
    BootTime Nullable(DateTime('UTC')),
    Computer String,
    Cpus Nullable(Int32),
    CpuSpeed Nullable(Int32),
    DependencyAgentVersion String,
    DisplayName String,
    DnsNames Array(String),
    FullDisplayName String,
    HostingProvider Nullable(String),
    HostName Nullable(String),
    HypervisorId Nullable(String),
    HypervisorType Nullable(String),
    Ipv4Addresses Array(String),
    Ipv4DefaultGateways Array(String),
    Ipv4SubnetMasks Array(String),
    Ipv6Addresses Array(String),
    MacAddresses Array(String),
    Machine String,
    OperatingSystemFamily String,
    OperatingSystemFullName Nullable(String),
    PhysicalMemoryMB Nullable(Int64),
    `_ResourceId` String,
    SourceSystem String,
    TimeGenerated DateTime('UTC'),
    TimeZone Nullable(String),
    `Type` String,
    VirtualizationState Nullable(String),
    VirtualMachineHypervisorId Nullable(String),
    VirtualMachineNativeId Nullable(String),
    VirtualMachineNativeName Nullable(String),
    VirtualMachineType Nullable(String)
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(TimeGenerated)
ORDER BY (Machine, TimeGenerated);
