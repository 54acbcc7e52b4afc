#!/usr/bin/env bash
# test/scripts/meta_json.sh --- META.json follows the PGXN meta spec 1.0.0
# (required keys, semantic versions, a provides entry whose file exists) and
# agrees with the control file's default version; prerequisites are a
# version or a range of them (">= 15.0.0, < 16.0.0": the tested majors).
set -euo pipefail
python3 - <<'PY'
import json, re, os, sys
semver = re.compile(r'^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+)?$')
m = json.load(open('META.json'))
errors = []
for key in ('name', 'abstract', 'maintainer', 'license', 'provides', 'meta-spec', 'version'):
    if key not in m:
        errors.append('missing required key %s' % key)
if m.get('meta-spec', {}).get('version') != '1.0.0':
    errors.append('meta-spec version is not 1.0.0')
if not semver.match(m.get('version', '')):
    errors.append('version %r is not a semantic version' % m.get('version'))
if m.get('license') not in ('postgresql', 'bsd', 'mit', 'gpl_3', 'apache_2_0', 'restricted'):
    errors.append('unexpected license %r' % m.get('license'))
for ext, p in m.get('provides', {}).items():
    for key in ('file', 'version'):
        if key not in p:
            errors.append('provides.%s lacks %s' % (ext, key))
    if not os.path.exists(p.get('file', '')):
        errors.append('provides.%s.file %s does not exist' % (ext, p.get('file')))
    if not semver.match(p.get('version', '')):
        errors.append('provides.%s.version is not semantic' % ext)
control = open('control/logistics_hub.control').read()
default = re.search(r"default_version\s*=\s*'([^']+)'", control).group(1)
if m['provides']['logistics_hub']['version'] != default or m['version'] != default:
    errors.append('META.json version differs from the control file default_version %s' % default)
for s in m.get('prereqs', {}).values():
    for rel in s.values():
        for dep, v in rel.items():
            # a version, or a range of comparisons (spec: Version Ranges)
            clauses = [c.strip() for c in v.split(',')]
            if not all(re.match(r'^(>=|<=|>|<|==|!=)?\s*', c) and
                       semver.match(re.sub(r'^(>=|<=|>|<|==|!=)\s*', '', c)) for c in clauses):
                errors.append('prereq %s version %r is neither a semantic version nor a range of them' % (dep, v))
if errors:
    print('\n'.join(errors)); sys.exit(1)
print('META.json valid (PGXN meta spec 1.0.0), version', default)
PY
