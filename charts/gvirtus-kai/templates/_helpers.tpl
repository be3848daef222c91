{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "gvirtus-kai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: the release name when it already contains the chart name. */}}
{{- define "gvirtus-kai.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of a component's objects; call with (dict "ctx" $ "component" "webhook"). */}}
{{- define "gvirtus-kai.componentName" -}}
{{- printf "%s-%s" (include "gvirtus-kai.fullname" .ctx | trunc 48 | trimSuffix "-") .component }}
{{- end }}

{{/*
Name of a component's cluster-scoped objects (ClusterRole, ClusterRoleBinding,
MutatingWebhookConfiguration); call like componentName. Release names are unique per namespace
only, so the namespace is part of the name: releases in two namespaces never claim the same
object. Namespaces contain no dots, so `<component name>.<namespace>` is unambiguous.
*/}}
{{- define "gvirtus-kai.clusterScopedName" -}}
{{- printf "%s.%s" (include "gvirtus-kai.componentName" .) .ctx.Release.Namespace }}
{{- end }}

{{- define "gvirtus-kai.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels --------------------------------------------------------------------------------------- */}}

{{/* Selector labels never change between upgrades: name, instance, component only. */}}
{{- define "gvirtus-kai.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gvirtus-kai.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gvirtus-kai.labels" -}}
{{ include "gvirtus-kai.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: gvirtus-kai
helm.sh/chart: {{ include "gvirtus-kai.chart" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Images ---------------------------------------------------------------------------------------- */}}

{{/* Call with (dict "ctx" $ "image" .Values.webhook.image); a digest wins over the tag. */}}
{{- define "gvirtus-kai.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (.image.tag | default .ctx.Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* Security ------------------------------------------------------------------------------------- */}}

{{/* Pod-level security context of every component that runs as non-root. */}}
{{- define "gvirtus-kai.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser | default 65532 }}
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "gvirtus-kai.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: {{ .readOnlyRootFilesystem }}
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Role labels and derived settings -------------------------------------------------------------- */}}

{{/* GVIRTUS_KAI_LABELS of the labeler: "<frontend key>=<default>,<backend key>=<default>". */}}
{{- define "gvirtus-kai.labelerDefaults" -}}
{{- $r := .Values.roleLabels }}
{{- printf "%s=%s,%s=%s" $r.frontend.key $r.frontend.default $r.backend.key $r.backend.default }}
{{- end }}

{{/* The headless Service of the ready backend pods: the controller reads its EndpointSlices, the
webhook's DNS placement its A records. */}}
{{- define "gvirtus-kai.backendHeadlessName" -}}
{{- printf "%s-headless" .Values.backend.service.name }}
{{- end }}

{{- define "gvirtus-kai.backendHost" -}}
{{- printf "%s.%s.svc.%s" (include "gvirtus-kai.backendHeadlessName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/*
Shell script of the exec probe that succeeds while a socket LISTENs on the backend's container port. It reads
/proc/net/tcp and /proc/net/tcp6 (local address HEXIP:HEXPORT, state 0A = LISTEN) with shell
builtins only and never connects: GVirtuS never closes a connection it accepted, so every TCP
probe would leak a descriptor in the backend.
*/}}
{{- define "gvirtus-kai.backend.listeningProbe" -}}
{{- $port := printf "%04X" (int .Values.backend.containerPort) }}
{{- printf "for table in /proc/net/tcp /proc/net/tcp6; do [ -r \"$table\" ] || continue; while read -r _ local _ state _; do [ \"$state\" = 0A ] && [ \"${local##*:}\" = %s ] && exit 0; done <\"$table\"; done; exit 1" $port }}
{{- end }}

{{/* Webhook TLS ----------------------------------------------------------------------------------- */}}

{{- define "gvirtus-kai.webhook.tlsSecretName" -}}
{{- if eq .Values.webhook.tls.mode "secret" }}
{{- required "webhook.tls.secret.name is required when webhook.tls.mode is secret" .Values.webhook.tls.secret.name }}
{{- else }}
{{- include "gvirtus-kai.componentName" (dict "ctx" . "component" "webhook-tls") }}
{{- end }}
{{- end }}

{{- define "gvirtus-kai.webhook.certificateName" -}}
{{- include "gvirtus-kai.componentName" (dict "ctx" . "component" "webhook") }}
{{- end }}

{{/* The DNS names the API server may use for the webhook Service; the serving cert covers all. */}}
{{- define "gvirtus-kai.webhook.dnsNames" -}}
{{- $svc := .Values.webhook.service.name }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/*
TLS material of `auto` mode as a dict {ca.crt, tls.crt, tls.key} (PEM). genCA returns a new CA on
every call, but the Secret, the caBundle and the Deployment's checksum must all agree, so the result
is memoized on the root context, which Helm shares between all templates of a chart in one render.
On upgrade the existing Secret is reused (lookup returns nothing under `helm template`/dry-run).
*/}}
{{- define "gvirtus-kai.webhook.autoTLS" -}}
{{- if not (hasKey . "gvirtusKaiWebhookTLS") }}
{{- $secretName := include "gvirtus-kai.webhook.tlsSecretName" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName }}
{{- $data := dict }}
{{- if and $existing $existing.data }}
{{- $d := $existing.data }}
{{- if and (index $d "ca.crt") (index $d "tls.crt") (index $d "tls.key") }}
{{- $data = dict "ca.crt" (index $d "ca.crt" | b64dec) "tls.crt" (index $d "tls.crt" | b64dec) "tls.key" (index $d "tls.key" | b64dec) }}
{{- end }}
{{- end }}
{{- if not $data }}
{{- $days := int .Values.webhook.tls.validityDays }}
{{- $ca := genCA (printf "%s-ca" (include "gvirtus-kai.fullname" .)) $days }}
{{- $svc := .Values.webhook.service.name }}
{{- $cn := printf "%s.%s.svc" $svc .Release.Namespace }}
{{- $cert := genSignedCert $cn nil (include "gvirtus-kai.webhook.dnsNames" . | fromJsonArray) $days $ca }}
{{- $data = dict "ca.crt" $ca.Cert "tls.crt" $cert.Cert "tls.key" $cert.Key }}
{{- end }}
{{- $_ := set . "gvirtusKaiWebhookTLS" $data }}
{{- end }}
{{- toJson (get . "gvirtusKaiWebhookTLS") }}
{{- end }}

{{/* caBundle of the MutatingWebhookConfiguration (base64 PEM); empty in cert-manager mode. */}}
{{- define "gvirtus-kai.webhook.caBundle" -}}
{{- if eq .Values.webhook.tls.mode "auto" }}
{{- index (include "gvirtus-kai.webhook.autoTLS" . | fromJson) "ca.crt" | b64enc }}
{{- else if eq .Values.webhook.tls.mode "secret" }}
{{- required "webhook.tls.secret.caBundle is required when webhook.tls.mode is secret" .Values.webhook.tls.secret.caBundle }}
{{- end }}
{{- end }}

{{/*
The nodes whose GPUs are virtual, as the webhook's GVIRTUS_KAI_VIRTUAL_GPU_NODES
(key=value,key!=value): exactly the nodes the device plugin's DaemonSet selects, its role affinity
and devicePlugin.nodeSelector.
*/}}
{{- define "gvirtus-kai.virtualGpuNodes" -}}
{{- $r := .Values.roleLabels }}
{{- $rules := list (printf "%s=true" $r.frontend.key) (printf "%s!=true" $r.gpuPresent.key) }}
{{- range $key, $value := .Values.devicePlugin.nodeSelector }}
{{- $rules = append $rules (printf "%s=%v" $key $value) }}
{{- end }}
{{- join "," $rules }}
{{- end }}

{{/*
CEL for the guard's matchConditions: a container or init container lists the GPU resource in its
limits or requests (the webhook itself ignores a quantity of 0).
*/}}
{{- define "gvirtus-kai.webhook.requestsGpu" -}}
{{- $asks := printf "has(c.resources) && ((has(c.resources.limits) && '%s' in c.resources.limits) || (has(c.resources.requests) && '%s' in c.resources.requests))" .Values.gpuResource .Values.gpuResource }}
{{- printf "object.spec.containers.exists(c, %s) || (has(object.spec.initContainers) && object.spec.initContainers.exists(c, %s))" $asks $asks }}
{{- end }}

{{/* Network policies ------------------------------------------------------------------------------ */}}

{{/*
Ingress-only NetworkPolicy of one component. Call with (dict "ctx" $ "component" "webhook"
"openPort" 8443) for a port reachable from anywhere, and/or "metricsPort" 8080 for a health/metrics
port reachable only from networkPolicy.metricsNamespaceSelector (none when it is empty), and/or
"controllerPort" 9180 for a port the release's controller pods poll. Probes come from the node's
kubelet, which CNIs enforcing NetworkPolicy allow.
*/}}
{{- define "gvirtus-kai.networkPolicy" -}}
{{- $selector := .ctx.Values.networkPolicy.metricsNamespaceSelector }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "gvirtus-kai.componentName" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "gvirtus-kai.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "gvirtus-kai.selectorLabels" . | nindent 6 }}
  policyTypes: ["Ingress"]
  {{- if or .openPort (and .metricsPort $selector) .controllerPort }}
  ingress:
    {{- with .openPort }}
    - ports:
        - port: {{ . }}
          protocol: TCP
    {{- end }}
    {{- with .controllerPort }}
    - from:
        - podSelector:
            matchLabels:
              {{- include "gvirtus-kai.selectorLabels" (dict "ctx" $.ctx "component" "controller") | nindent 14 }}
      ports:
        - port: {{ . }}
          protocol: TCP
    {{- end }}
    {{- if and .metricsPort $selector }}
    - from:
        - namespaceSelector:
            {{- toYaml $selector | nindent 12 }}
      ports:
        - port: {{ .metricsPort }}
          protocol: TCP
    {{- end }}
  {{- else }}
  # Nothing may connect: the health/metrics port is open to no namespace (metricsNamespaceSelector).
  ingress: []
  {{- end }}
{{- end }}

{{/* The controller's policy: an empty controller.policy follows the backend agent (measured
load when there is an agent to ask). */}}
{{- define "gvirtus-kai.controllerPolicy" -}}
{{- $b := .Values.backend }}
{{- $agent := and $b.enabled (dig "agent" "enabled" false $b) }}
{{- .Values.controller.policy | default (ternary "leastLoaded" "leastPods" $agent) }}
{{- end }}
