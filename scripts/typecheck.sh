#!/usr/bin/env bash
# mypy --strict on collector/ and analytics/, under the names the installed package gives them. pyproject.toml maps
# cli/ to `hopscope` and collector/ to `hopscope.collector` (the customer's layout); mypy cannot read that mapping,
# so it checks a farm of symlinks in build/typecheck that has the installed shape.
set -euo pipefail
cd "$(dirname "$0")/.."
farm=build/typecheck
rm -rf "$farm"
mkdir -p "$farm/hopscope"
for file in cli/*.py; do ln -s "$PWD/$file" "$farm/hopscope/"; done
for package in collector analytics instrumentation; do ln -s "$PWD/$package" "$farm/hopscope/$package"; done
cd "$farm"
exec "${MYPY:-mypy}" --config-file ../../pyproject.toml --strict -p hopscope.collector -p hopscope.analytics
