{{/*
Names, labels and the values the chart derives in one place, so that the Deployment, the ConfigMap and
the autoscalers cannot disagree: the model directory, the config file path, the grace period, and the
worker.toml itself.
*/}}

{{- define "pva-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pva-worker.fullname" -}}
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

{{- define "pva-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pva-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pva-worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pva-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pva-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pva-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pva-worker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* engine.model_dir: the model volume's mount path joined with model.path. */}}
{{- define "pva-worker.modelDir" -}}
{{- if .Values.model.path }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) (trimPrefix "/" .Values.model.path) }}
{{- else }}
{{- .Values.model.mountPath }}
{{- end }}
{{- end }}

{{/* Directory and file of the rendered worker.toml inside the container. */}}
{{- define "pva-worker.configDir" -}}/etc/pva-worker{{- end }}
{{- define "pva-worker.configFile" -}}worker.toml{{- end }}

{{/* Where the C2PA signing Secret is mounted, and its two files there. */}}
{{- define "pva-worker.provenanceDir" -}}/var/run/secrets/pva-worker/c2pa{{- end }}
{{- define "pva-worker.signingKeyFile" -}}signing-key.pem{{- end }}
{{- define "pva-worker.certificateChainFile" -}}certificate-chain.pem{{- end }}

{{/*
TLS files: each CA bundle or client certificate is its own read-only volume, mounted in its own directory
under this one; `pva-worker.tlsFiles` gives the settings they are rendered as ("" when not configured).
*/}}
{{- define "pva-worker.tlsDir" -}}/var/run/secrets/pva-worker/tls{{- end }}
{{- define "pva-worker.tlsFiles" -}}
{{- $dir := include "pva-worker.tlsDir" . }}
{{- $t := .Values.amqp.tls }}
{{- $client := $t.clientSecret }}
{{- toJson (dict
  "amqp" (dict
    "tls_ca_file" (ternary (printf "%s/amqp-ca/ca.pem" $dir) "" (ne $t.ca.name ""))
    "tls_cert_file" (ternary (printf "%s/amqp-client/tls.crt" $dir) "" (ne $client ""))
    "tls_key_file" (ternary (printf "%s/amqp-client/tls.key" $dir) "" (ne $client "")))
  "s3" (dict
    "tls_ca_file" (ternary (printf "%s/s3-ca/ca.pem" $dir) "" (ne .Values.s3.tls.ca.name "")))) }}
{{- end }}

{{/* A CA bundle volume named `volume` from `ca` (kind configMap or secret, name, key), as `ca.pem`. */}}
{{- define "pva-worker.caVolume" -}}
- name: {{ .volume }}
  {{- if eq .ca.kind "secret" }}
  secret:
    secretName: {{ .ca.name }}
    defaultMode: 0444
    items:
      - key: {{ .ca.key }}
        path: ca.pem
  {{- else }}
  configMap:
    name: {{ .ca.name }}
    defaultMode: 0444
    items:
      - key: {{ .ca.key }}
        path: ca.pem
  {{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: the worker's own shutdown deadline plus a margin, never less. */}}
{{- define "pva-worker.terminationGracePeriod" -}}
{{- add (int .Values.worker.shutdownDeadlineSeconds) (int .Values.worker.terminationGraceExtraSeconds) }}
{{- end }}

{{/*
One TOML value. Helm reads every number of a values file as a float64; integral numbers are written as
TOML integers (`60`, not `60.0`, as in config/default.toml: the worker's loader would round a float into
an integer setting without a word) and others as floats.
*/}}
{{- define "pva-worker.tomlValue" -}}
{{- $kind := kindOf . }}
{{- if eq $kind "string" }}
{{- toJson . }}
{{- else if eq $kind "bool" }}
{{- ternary "true" "false" . }}
{{- else if or (eq $kind "float64") (eq $kind "float32") }}
{{- if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if hasPrefix "int" $kind }}
{{- . }}
{{- else if eq $kind "slice" }}
{{- $items := list }}
{{- range . }}{{ $items = append $items (include "pva-worker.tomlValue" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else }}
{{- fail (printf "config: cannot write %v (%s) as a TOML value" . $kind) }}
{{- end }}
{{- end }}

{{/*
worker.toml: `config` from the values with the derived settings on top (the schema keeps `config` from
naming those). Sections and keys are sorted, so the checksum annotation only changes with the content.
*/}}
{{- define "pva-worker.workerToml" -}}
{{- $config := deepCopy (default dict .Values.config) }}
{{- $derived := dict
  "engine" (dict
    "model_dir" (include "pva-worker.modelDir" .)
    "ort_library" .Values.image.ortLibrary
    "execution_provider" (ternary "cuda" "cpu" .Values.gpu.enabled))
  "worker" (dict
    "concurrency" .Values.worker.concurrency
    "shutdown_deadline_secs" .Values.worker.shutdownDeadlineSeconds)
  "amqp" (dict "job_queue" .Values.amqp.jobQueue)
  "metrics" (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port)))
  "provenance" (dict "signing_key" "" "certificate_chain" "") }}
{{- if .Values.provenance.existingSecret }}
{{- $dir := include "pva-worker.provenanceDir" . }}
{{- $_ := set $derived "provenance" (dict
  "signing_key" (printf "%s/%s" $dir (include "pva-worker.signingKeyFile" .))
  "certificate_chain" (printf "%s/%s" $dir (include "pva-worker.certificateChainFile" .))) }}
{{- end }}
{{- $config = mustMergeOverwrite $config $derived (include "pva-worker.tlsFiles" . | fromJson) }}
{{- printf "# Rendered by the %s chart from its values; credentials come from Secrets as PVA__* variables.\n" .Chart.Name }}
{{- range $section := keys $config | sortAlpha }}
{{- $table := get $config $section }}
{{- printf "\n[%s]\n" $section }}
{{- range $key := keys $table | sortAlpha }}
{{- printf "%s = %s\n" $key (include "pva-worker.tomlValue" (get $table $key)) }}
{{- end }}
{{- end }}
{{- $presets := default dict .Values.presets }}
{{- range $name := keys $presets | sortAlpha }}
{{- $preset := get $presets $name }}
{{- printf "\n[presets.%s]\n" $name }}
{{- range $key := keys $preset | sortAlpha }}
{{- printf "%s = %s\n" $key (include "pva-worker.tomlValue" (get $preset $key)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name and key of the Secret KEDA reads the broker connection from. */}}
{{- define "pva-worker.kedaHostSecret" -}}
{{- $k := .Values.autoscaling.keda }}
{{- if $k.hostSecret }}{{ $k.hostSecret }}
{{- else if eq $k.protocol "amqp" }}{{ .Values.amqp.existingSecret }}
{{- else }}{{ fail "autoscaling.keda.hostSecret: protocol http needs a Secret with the management URL http://user:password@host:15672/vhost" }}
{{- end }}
{{- end }}
