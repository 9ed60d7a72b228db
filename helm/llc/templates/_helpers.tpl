{{/* Names, labels and the wiring shared by several templates. */}}

{{- define "llc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; 40 characters leave room for suffixes such as "-ray-head" and
     KubeRay's own pod-name suffixes within Kubernetes' 63-character limit. */}}
{{- define "llc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "llc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "llc.frontendSelector" -}}
app.kubernetes.io/name: {{ include "llc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: frontend
{{- end -}}

{{- define "llc.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "llc.rayImage" -}}
{{- $img := .Values.ray.image | default dict -}}
{{- printf "%s:%s" (default .Values.image.repository $img.repository) (default (default .Chart.AppVersion .Values.image.tag) $img.tag) -}}
{{- end -}}

{{- define "llc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "llc.rayClusterName" -}}{{ include "llc.fullname" . }}-ray{{- end -}}

{{/* The head's Service: named explicitly (headService.metadata.name) so the front end's
     address does not depend on how KubeRay derives or truncates its default name. */}}
{{- define "llc.rayHeadService" -}}{{ include "llc.fullname" . }}-ray-head{{- end -}}

{{- define "llc.rayDashboardUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "llc.rayHeadService" .) .Release.Namespace (int .Values.ray.dashboardPort) -}}
{{- end -}}

{{- define "llc.tokenSecretName" -}}
{{- default (printf "%s-token" (include "llc.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* The Secret with the tokens file of principals; "" = none configured. */}}
{{- define "llc.tokensSecretName" -}}
{{- if .Values.auth.tokensSecret -}}{{ .Values.auth.tokensSecret }}
{{- else if .Values.auth.tokens -}}{{ printf "%s-tokens" (include "llc.fullname" .) }}
{{- end -}}
{{- end -}}

{{- define "llc.storeSecretName" -}}
{{- default (printf "%s-store" (include "llc.fullname" .)) .Values.store.postgresql.existingSecret -}}
{{- end -}}

{{- define "llc.rayAuthSecretName" -}}
{{- default (printf "%s-ray-auth" (include "llc.fullname" .)) .Values.ray.auth.existingSecret -}}
{{- end -}}

{{- define "llc.sqliteClaimName" -}}
{{- default (printf "%s-store" (include "llc.fullname" .)) .Values.store.sqlite.existingClaim -}}
{{- end -}}

{{- define "llc.sharedClaimName" -}}
{{- default (printf "%s-shared" (include "llc.fullname" .)) .Values.sharedStorage.existingClaim -}}
{{- end -}}

{{/* A Secret's value that survives upgrades: the given one, else the one already in the
     cluster, else a new random one. Args: (list $ secretName key given). */}}
{{- define "llc.stableSecretValue" -}}
{{- $root := index . 0 -}}{{- $name := index . 1 -}}{{- $key := index . 2 -}}{{- $given := index . 3 -}}
{{- if $given -}}
{{- $given | b64enc -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace $name -}}
{{- if and $existing (hasKey ($existing.data | default dict) $key) -}}
{{- index $existing.data $key -}}
{{- else -}}
{{- randAlphaNum 40 | b64enc -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Ray's token authentication, on the front end and on every Ray container. */}}
{{- define "llc.rayAuthEnv" -}}
{{- if .Values.ray.auth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "llc.rayAuthSecretName" . }}
      key: auth_token
{{- else }}
- name: RAY_AUTH_MODE
  value: disabled
{{- end }}
{{- end -}}

{{/* Settings every Ray container shares: auth, offline usage stats, Hugging Face. */}}
{{- define "llc.rayNodeEnv" -}}
{{ include "llc.rayAuthEnv" . | trim }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: PYTHONUNBUFFERED
  value: "1"
{{- if .Values.sharedStorage.enabled }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.sharedStorage.mountPath | quote }}
{{- end }}
{{- if .Values.huggingface.tokenSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.huggingface.tokenSecret }}
      key: {{ .Values.huggingface.tokenSecretKey }}
{{- end }}
{{- end -}}

{{- define "llc.rayNodeVolumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
{{- if .Values.sharedStorage.enabled }}
- name: shared
  mountPath: {{ .Values.sharedStorage.mountPath }}
{{- end }}
{{- end -}}

{{- define "llc.rayNodeVolumes" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.ray.sharedMemory }}
{{- if .Values.sharedStorage.enabled }}
- name: shared
  persistentVolumeClaim:
    claimName: {{ include "llc.sharedClaimName" . }}
{{- end }}
{{- end -}}

{{/* rayStartParams as KubeRay wants them: a map of strings. */}}
{{- define "llc.rayStartParams" -}}
{{- $params := dict -}}
{{- range $k, $v := . -}}{{- $_ := set $params $k (toString $v) -}}{{- end -}}
{{- toYaml $params -}}
{{- end -}}

{{/* Checks values.schema.json cannot express (relations between values). */}}
{{- define "llc.validate" -}}
{{- if and (eq .Values.store.type "sqlite") (gt (int .Values.frontend.replicas) 1) -}}
{{- fail (printf "frontend.replicas=%d needs store.type=postgresql: SQLite is a single-writer file on one volume; set frontend.replicas=1 or use PostgreSQL" (int .Values.frontend.replicas)) -}}
{{- end -}}
{{- if and (eq .Values.store.type "postgresql") (not .Values.store.postgresql.url) (not .Values.store.postgresql.existingSecret) -}}
{{- fail "store.type=postgresql needs store.postgresql.url (postgresql://USER:PASSWORD@HOST:5432/DB) or store.postgresql.existingSecret (a Secret with the URL under store.postgresql.existingSecretKey)" -}}
{{- end -}}
{{- if and (or .Values.auth.tokens .Values.auth.tokensSecret) (not .Values.auth.enabled) -}}
{{- fail "auth.tokens / auth.tokensSecret need auth.enabled=true: without authentication the server cannot tell principals apart" -}}
{{- end -}}
{{- if and .Values.auth.tokens .Values.auth.tokensSecret -}}
{{- fail "set auth.tokens or auth.tokensSecret, not both: the front end reads one tokens file" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled=true needs tls.secretName: a kubernetes.io/tls Secret with tls.crt and tls.key" -}}
{{- end -}}
{{- $enabled := 0 -}}
{{- range $name, $g := .Values.ray.workerGroups -}}
{{- if $g.enabled -}}
{{- $enabled = add1 $enabled -}}
{{- if gt (int $g.minReplicas) (int $g.maxReplicas) -}}
{{- fail (printf "ray.workerGroups.%s: minReplicas (%d) is above maxReplicas (%d); lower minReplicas or raise maxReplicas" $name (int $g.minReplicas) (int $g.maxReplicas)) -}}
{{- end -}}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) -}}
{{- fail (printf "ray.workerGroups.%s: replicas (%d) must lie within [minReplicas, maxReplicas] = [%d, %d]" $name (int $g.replicas) (int $g.minReplicas) (int $g.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq $enabled 0) (eq (toString (index .Values.ray.head.rayStartParams "num-cpus" | default "")) "0") -}}
{{- fail "ray.workerGroups: no group is enabled and the head has num-cpus 0, so no chain could run; enable a group (e.g. --set ray.workerGroups.cpu.enabled=true)" -}}
{{- end -}}
{{- end -}}
