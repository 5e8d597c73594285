#!/usr/bin/env bash
# After adding or changing a translatable string: extract every _() / N_() / ngettext() into the template, merge
# it into the en and zh_CN catalogs (new strings arrive untranslated; tests/test_language.py then names them),
# and write their Chinese in lora_spectrum/locales/zh_CN/LC_MESSAGES/lora_spectrum.po (docs/glossary.md).
# The .mo files are compiled at start-up (lora_spectrum/language.py); `pybabel compile` does the same by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
L=lora_spectrum/locales
pybabel -q extract -F babel.cfg -o "$L/lora_spectrum.pot" --no-location --sort-output --omit-header \
  --no-wrap -c "Translators:" .
for lang in en zh_CN; do
  if [ -f "$L/$lang/LC_MESSAGES/lora_spectrum.po" ]; then
    pybabel -q update -i "$L/lora_spectrum.pot" -d "$L" -D lora_spectrum -l "$lang" --no-wrap --ignore-obsolete \
      --no-fuzzy-matching --ignore-pot-creation-date
  else
    pybabel -q init -i "$L/lora_spectrum.pot" -d "$L" -D lora_spectrum -l "$lang" --no-wrap
  fi
done
