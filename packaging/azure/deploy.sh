#!/usr/bin/env bash
# Deploy what depmap's azure_logs sink needs in Azure Monitor Logs:
#   1. the custom tables VMComputer_CL, VMProcess_CL, VMBoundPort_CL, VMConnection_CL
#      (Tables API PUT, bodies in tables/*.json)
#   2. the data collection rule (kind Direct, body dcr.json with the workspace filled in)
#   3. optionally the Monitoring Metrics Publisher role on the DCR for the sending identity
#   4. optionally workspace functions VMComputer, VMProcess, VMBoundPort, VMConnection over
#      the _CL tables, so the VM Insights sample queries run unchanged
# and prints the [sink.azure_logs] settings depmap needs. See README.md in this directory.
#
# Usage (after `az login` and `az account set --subscription ...`):
#   RESOURCE_GROUP=rg WORKSPACE=ws [DCR_NAME=depmap] [DCR_RESOURCE_GROUP=rg] \
#   [PRINCIPAL_ID=<object id>] [FUNCTION_PREFIX=] [SKIP_FUNCTIONS=1] [DRY_RUN=1] ./deploy.sh
#
#   PRINCIPAL_ID     object (principal) id of the service principal or managed identity that
#                    sends; gets Monitoring Metrics Publisher on the DCR. Unset: no assignment.
#   FUNCTION_PREFIX  prefix of the function aliases (default none: VMConnection etc.; a
#                    workspace that also holds real VM Insights Map data should use e.g. DM).
#   DRY_RUN=1        print the az commands instead of running them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${RESOURCE_GROUP:?set RESOURCE_GROUP (resource group of the workspace)}"
: "${WORKSPACE:?set WORKSPACE (Log Analytics workspace name)}"
DCR_NAME="${DCR_NAME:-depmap}"
DCR_RESOURCE_GROUP="${DCR_RESOURCE_GROUP:-$RESOURCE_GROUP}"
FUNCTION_PREFIX="${FUNCTION_PREFIX:-}"
TABLES_API="2022-10-01"
DCR_API="2023-03-11"
tables=(VMComputer VMProcess VMBoundPort VMConnection)

run() {
    if [[ "${DRY_RUN:-}" == 1 ]]; then
        { printf '+'; printf ' %q' "$@"; printf '\n'; } >&2
    else
        "$@"
    fi
}

if [[ "${DRY_RUN:-}" == 1 ]]; then
    sub="<subscription-id>"
    ws_id="/subscriptions/$sub/resourceGroups/$RESOURCE_GROUP/providers/Microsoft.OperationalInsights/workspaces/$WORKSPACE"
    location="${LOCATION:-<workspace-location>}"
else
    sub="$(az account show --query id -o tsv)"
    ws_id="$(az monitor log-analytics workspace show -g "$RESOURCE_GROUP" -n "$WORKSPACE" --query id -o tsv)"
    location="${LOCATION:-$(az monitor log-analytics workspace show -g "$RESOURCE_GROUP" -n "$WORKSPACE" --query location -o tsv)}"
fi
dcr_id="/subscriptions/$sub/resourceGroups/$DCR_RESOURCE_GROUP/providers/Microsoft.Insights/dataCollectionRules/$DCR_NAME"

echo "== 1. custom tables in $WORKSPACE" >&2
for t in "${tables[@]}"; do
    run az rest --method put \
        --url "$ws_id/tables/${t}_CL?api-version=$TABLES_API" \
        --body "@$here/tables/${t}_CL.json" --output none
done

echo "== 2. data collection rule $DCR_NAME ($location)" >&2
rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
sed -e "s|__WORKSPACE_RESOURCE_ID__|$ws_id|" -e "s|__LOCATION__|$location|" \
    "$here/dcr.json" > "$rendered"
# A new table can take a while before a DCR may name it as output: bounded retries.
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if run az rest --method put --url "$dcr_id?api-version=$DCR_API" \
        --body "@$rendered" --output none; then
        break
    fi
    if [[ $attempt == 10 ]]; then
        echo "deploy.sh: the DCR could not be created; see the error above" >&2
        exit 1
    fi
    echo "deploy.sh: DCR creation failed (tables still provisioning?); retry $attempt/9 in 30 s" >&2
    sleep 30
done

if [[ -n "${PRINCIPAL_ID:-}" ]]; then
    echo "== 3. Monitoring Metrics Publisher on the DCR for $PRINCIPAL_ID" >&2
    run az role assignment create --assignee-object-id "$PRINCIPAL_ID" \
        --assignee-principal-type ServicePrincipal \
        --role "Monitoring Metrics Publisher" --scope "$dcr_id" --output none
else
    echo "== 3. skipped: set PRINCIPAL_ID to grant Monitoring Metrics Publisher on the DCR" >&2
fi

if [[ "${SKIP_FUNCTIONS:-}" != 1 ]]; then
    echo "== 4. functions ${FUNCTION_PREFIX}VMComputer ... over the _CL tables" >&2
    for t in "${tables[@]}"; do
        query="${t}_CL | extend _ResourceId = ResourceId"
        args=(-g "$RESOURCE_GROUP" --workspace-name "$WORKSPACE" -n "depmap_${FUNCTION_PREFIX}${t}"
              --category depmap --display-name "${FUNCTION_PREFIX}${t} (depmap, ${t}_CL)"
              --saved-query "$query" --fa "${FUNCTION_PREFIX}${t}")
        run az monitor log-analytics workspace saved-search create "${args[@]}" --output none ||
            run az monitor log-analytics workspace saved-search update "${args[@]}" --output none
    done
fi

echo "== depmap configuration" >&2
if [[ "${DRY_RUN:-}" == 1 ]]; then
    immutable="<properties.immutableId>"
    endpoint="<properties.endpoints.logsIngestion>"
else
    immutable="$(az rest --method get --url "$dcr_id?api-version=$DCR_API" --query properties.immutableId -o tsv)"
    endpoint="$(az rest --method get --url "$dcr_id?api-version=$DCR_API" --query properties.endpoints.logsIngestion -o tsv)"
fi
cat <<EOF
[sink]
kind = "azure_logs"

[sink.azure_logs]
endpoint = "$endpoint"
dcr_immutable_id = "$immutable"
# auth = "client_secret": tenant_id, client_id, client_secret_file
# auth = "managed_identity": the VM's identity through IMDS (managed_identity_client_id for a
#                            user-assigned one)
EOF
