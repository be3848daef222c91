#!/usr/bin/env bash
# Non-Python linters over the repository; each fails the build on findings.
set -euo pipefail
cd "$(dirname "$0")/.."

yamllint --strict -c ci/yamllint.yaml .
mapfile -t dockerfiles < <(git ls-files --cached --others --exclude-standard 'Dockerfile.*' '*/Dockerfile')
if ((${#dockerfiles[@]})); then hadolint "${dockerfiles[@]}"; fi
if [ -d .github/workflows ]; then actionlint; fi
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
if ((${#scripts[@]})); then shellcheck "${scripts[@]}"; fi
if [ -f charts/gvirtus-kai/Chart.yaml ]; then helm lint --strict charts/gvirtus-kai; fi
unformatted=$(gofmt -l ci/tools)
if [ -n "$unformatted" ]; then echo "gofmt: $unformatted" && exit 1; fi
