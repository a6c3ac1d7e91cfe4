{{/* Chart name, truncated to the 63-char DNS label limit. */}}
{{- define "realiz3d.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "realiz3d.fullname" -}}
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

{{- define "realiz3d.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "realiz3d.labels" -}}
helm.sh/chart: {{ include "realiz3d.chart" . }}
{{ include "realiz3d.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: realiz3d
{{- end }}

{{- define "realiz3d.selectorLabels" -}}
app.kubernetes.io/name: {{ include "realiz3d.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: call with (dict "ctx" $ "component" "api"). */}}
{{- define "realiz3d.componentLabels" -}}
{{ include "realiz3d.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "realiz3d.componentSelector" -}}
{{ include "realiz3d.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "realiz3d.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "realiz3d.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "realiz3d.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "realiz3d.apiImage" -}}
{{- printf "%s:%s-api" .Values.image.repository (include "realiz3d.imageTag" .) }}
{{- end }}

{{- define "realiz3d.workerImage" -}}
{{- printf "%s:%s-%s" .Values.image.repository (include "realiz3d.imageTag" .) (ternary "worker" "worker-cpu" .Values.worker.gpu.enabled) }}
{{- end }}

{{- define "realiz3d.redisHost" -}}
{{- printf "%s-redis" (include "realiz3d.fullname" .) }}
{{- end }}

{{/* Secret and key holding REALIZ3D_BROKER_URL. */}}
{{- define "realiz3d.brokerSecretName" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecret }}
{{- else }}
{{- printf "%s-broker" (include "realiz3d.fullname" .) }}
{{- end }}
{{- end }}

{{- define "realiz3d.brokerSecretKey" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecretKey }}
{{- else }}broker-url{{- end }}
{{- end }}

{{- define "realiz3d.brokerUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:%d/%d" (include "realiz3d.redisHost" .) (int .Values.redis.port) (int .Values.redis.databaseIndex) }}
{{- else if .Values.redis.external.url }}
{{- .Values.redis.external.url }}
{{- else if not .Values.redis.external.existingSecret }}
{{- fail "redis.enabled is false: set redis.external.url or redis.external.existingSecret" }}
{{- end }}
{{- end }}

{{- define "realiz3d.apiKeysSecretName" -}}
{{- default (printf "%s-auth" (include "realiz3d.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* Env every realiz3d container gets: the broker URL and API keys from Secrets, paths and ports. */}}
{{- define "realiz3d.commonEnv" -}}
- name: REALIZ3D_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "realiz3d.brokerSecretName" . }}
      key: {{ include "realiz3d.brokerSecretKey" . }}
- name: REALIZ3D_ARTIFACT_DIR
  value: {{ .Values.persistence.artifacts.mountPath | quote }}
- name: HOME
  value: /tmp
{{- if and (eq (toString .Values.settings.artifact_store) "s3") .Values.persistence.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.persistence.s3.existingSecret }}
      key: {{ .Values.persistence.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.persistence.s3.existingSecret }}
      key: {{ .Values.persistence.s3.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{- define "realiz3d.artifactVolume" -}}
{{- $s3 := eq (toString .Values.settings.artifact_store) "s3" }}
{{- if and (not .Values.persistence.artifacts.enabled) (not $s3) }}
{{- fail "persistence.artifacts.enabled=false with settings.artifact_store=local gives every api and worker pod its own emptyDir: downloads would 404. Enable persistence.artifacts (a ReadWriteMany claim) or set settings.artifact_store=s3" }}
{{- end }}
- name: artifacts
{{- if and .Values.persistence.artifacts.enabled (not $s3) }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-artifacts" (include "realiz3d.fullname" .)) .Values.persistence.artifacts.existingClaim }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}

{{- define "realiz3d.redisAddress" -}}
{{- if .Values.worker.keda.redisAddress }}
{{- .Values.worker.keda.redisAddress }}
{{- else if .Values.redis.enabled }}
{{- printf "%s.%s.svc:%d" (include "realiz3d.redisHost" .) .Release.Namespace (int .Values.redis.port) }}
{{- else }}
{{- fail "worker.keda.enabled with an external Redis: set worker.keda.redisAddress (host:port)" }}
{{- end }}
{{- end }}

{{/* Egress of api and workers: DNS, Redis (in-chart pods or any address for an external one), extras. */}}
{{- define "realiz3d.egressRules" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- if .Values.redis.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "realiz3d.componentSelector" (dict "ctx" . "component" "redis") | nindent 10 }}
  ports:
    - port: {{ .Values.redis.port }}
      protocol: TCP
{{- else }}
- ports:
    - port: {{ .Values.redis.port }}
      protocol: TCP
{{- end }}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The worker's grace period: a drain must cover the longest job (the soft limit at least). */}}
{{- define "realiz3d.workerGracePeriod" -}}
{{- $soft := int (default 1800 .Values.settings.job_soft_time_limit) }}
{{- $hard := int (default 1900 .Values.settings.job_time_limit) }}
{{- $grace := .Values.worker.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $grace }}
{{- add $hard 60 }}
{{- else if lt (int $grace) $soft }}
{{- fail (printf "worker.terminationGracePeriodSeconds=%d is shorter than settings.job_soft_time_limit=%d: a drained worker would be killed mid-job" (int $grace) $soft) }}
{{- else }}
{{- int $grace }}
{{- end }}
{{- end }}

{{/* The engine cache of a worker pod: emptyDir, a per-pod ephemeral claim, or one shared RWX claim. */}}
{{- define "realiz3d.engineCacheVolume" -}}
{{- $ec := .Values.worker.engineCache }}
- name: engine-cache
{{- if eq $ec.type "ephemeral" }}
  ephemeral:
    volumeClaimTemplate:
      metadata:
        labels:
          {{- include "realiz3d.componentSelector" (dict "ctx" . "component" "worker") | nindent 10 }}
      spec:
        accessModes:
          - ReadWriteOnce
        {{- with $ec.storageClass }}
        storageClassName: {{ . | quote }}
        {{- end }}
        resources:
          requests:
            storage: {{ $ec.size | quote }}
{{- else if eq $ec.type "shared" }}
{{- if and (not (has "ReadWriteMany" $ec.accessModes)) (or .Values.worker.keda.enabled (gt (int .Values.worker.replicaCount) 1)) }}
{{- fail "worker.engineCache.type=shared mounts one claim in every worker replica: its accessModes must include ReadWriteMany (a ReadWriteOnce claim fails with Multi-Attach on a second node); use type=ephemeral for a cache per pod" }}
{{- end }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-engine-cache" (include "realiz3d.fullname" .)) $ec.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ $ec.emptyDirSizeLimit }}
{{- end }}
{{- end }}
