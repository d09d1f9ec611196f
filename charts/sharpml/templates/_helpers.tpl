{{/* Names: <release>-sharpml unless overridden; a release named like the chart is not repeated. */}}
{{- define "sharpml.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "sharpml.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* app.kubernetes.io/* labels; call with (dict "ctx" $ "component" "api"). */}}
{{- define "sharpml.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sharpml.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "sharpml.labels" -}}
{{ include "sharpml.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: sharpml
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sharpml.serviceAccountName" -}}
{{- $sa := index .ctx.Values.serviceAccount .component -}}
{{- if $sa.create -}}
{{- default (printf "%s-%s" (include "sharpml.fullname" .ctx) .component) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{- define "sharpml.claimName" -}}
{{- default (printf "%s-data" (include "sharpml.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{- define "sharpml.secretName" -}}
{{- default (printf "%s-secrets" (include "sharpml.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Namespaces the operator watches in namespaced mode: the release's and operator.watchNamespaces. */}}
{{- define "sharpml.watchNamespaces" -}}
{{- prepend .Values.operator.watchNamespaces .Release.Namespace | uniq | toJson -}}
{{- end -}}

{{/*
The env of a container from the settings registry's values: every SHARPML_* key of the given components
(settings.<component>), "" left unset; objects and arrays as JSON, whole numbers without an exponent. Secret
settings (secrets.<component>) come from the chart's Secret or secrets.existingSecret, optional, so a key
that is not there leaves the variable unset. Call with (dict "ctx" $ "components" (list "core" "api")).
*/}}
{{- define "sharpml.settingsEnv" -}}
{{- $ctx := .ctx -}}
{{- range $component := .components }}
{{- range $name, $value := index $ctx.Values.settings $component }}
{{- if not (or (eq (toString $value) "") (kindIs "invalid" $value)) }}
- name: {{ $name }}
{{- if or (kindIs "map" $value) (kindIs "slice" $value) }}
  value: {{ toJson $value | quote }}
{{- else if and (kindIs "float64" $value) (eq $value (floor $value)) }}
  value: {{ int64 $value | toString | quote }}
{{- else }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- range $name, $_ := index $ctx.Values.secrets $component }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "sharpml.secretName" $ctx }}
      key: {{ $name }}
      optional: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod Security "restricted": the pod's and each container's security context. */}}
{{- define "sharpml.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.uid }}
runAsGroup: {{ .Values.podSecurity.uid }}
fsGroup: {{ .Values.podSecurity.uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sharpml.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.uid }}
runAsGroup: {{ .Values.podSecurity.uid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* repository:tag (the appVersion when tag is ""), or repository@digest. Call with (list $ .Values.image.api). */}}
{{- define "sharpml.image" -}}
{{- $ctx := index . 0 -}}{{- $image := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $ctx.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The seed's alerts as Prometheus rule groups (the PrometheusRule's spec; tests/chart runs `promtool test rules`
on exactly this). max() over replicas: only the operator's leader serves its metrics.
*/}}
{{- define "sharpml.alertGroups" -}}
{{- $r := .Values.monitoring.prometheusRule -}}
{{- $ns := .Release.Namespace -}}
{{- $fullname := include "sharpml.fullname" . -}}
{{- $op := printf "namespace=%q, service=%q" $ns (printf "%s-operator-metrics" $fullname) -}}
{{- $procs := printf "namespace=%q, service=~%q" $ns (printf "%s-api|%s-operator-metrics" $fullname $fullname) -}}
groups:
  - name: sharpml
    rules:
      - alert: SharpMLJobFailureRateHigh
        expr: >-
          sum(increase(sharpml_jobs_finished_total{ {{- $op }}, phase="Failed"}[1h]))
          / sum(increase(sharpml_jobs_finished_total{ {{- $op }}}[1h])) > {{ $r.failureRatio }}
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: More than {{ mulf $r.failureRatio 100 }} % of SharpJobs failed in the last hour
          description: '{{ "{{" }} $value | humanizePercentage {{ "}}" }} of the jobs that finished in the last hour ended Failed (sharpml_job_failures_total has the reasons).'
      - alert: SharpMLQueueDeep
        expr: max(sharpml_sfm_queue_depth{ {{- $op }}}) > {{ $r.queueDepth }}
        for: 10m
        labels: {severity: warning}
        annotations:
          summary: More than {{ $r.queueDepth }} SharpJobs wait for the SfM node
          description: '{{ "{{" }} $value {{ "}}" }} jobs are Queued: add SfM capacity (SHARPML_SFM_CONCURRENCY, nodes).'
      - alert: SharpMLProcessingSlow
        expr: >-
          sum(increase(sharpml_stage_duration_seconds_sum{ {{- $op }}, stage!="queue"}[1h]))
          / sum(increase(sharpml_stage_duration_seconds_count{ {{- $op }}, stage="sfm"}[1h])) > {{ $r.avgProcessingSeconds }}
        for: 15m
        labels: {severity: warning}
        annotations:
          summary: Average processing time per job over {{ div (int $r.avgProcessingSeconds) 60 }} min in the last hour
          description: 'Jobs spent {{ "{{" }} $value | humanizeDuration {{ "}}" }} on average in their stages (queue excluded).'
      - alert: SharpMLDataVolumeLow
        expr: min(sharpml_data_volume_free_bytes{ {{- $op }}}) < {{ int64 $r.dataFreeBytes }}
        for: 5m
        labels: {severity: critical}
        annotations:
          summary: Less than {{ div (int64 $r.dataFreeBytes) 1000000000 }} GB free on the data volume
          description: '{{ "{{" }} $value | humanize {{ "}}" }}B free on the shared data volume.'
      - alert: SharpMLMemoryHigh
        expr: max by (pod) (process_resident_memory_bytes{ {{- $procs }}}) > {{ int64 $r.memoryBytes }}
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: A SharpML process uses more than {{ div (int64 $r.memoryBytes) 1000000000 }} GB of memory
          description: '{{ "{{" }} $labels.pod {{ "}}" }} has {{ "{{" }} $value | humanize {{ "}}" }}B resident.'
{{- end -}}
