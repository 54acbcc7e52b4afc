#!/usr/bin/env python3
"""test/harness/stepsync.py --- keep the unreleased step in line with sql/src.

Usage (from the checkout): python3 test/harness/stepsync.py sql/src STEP [--write]

The step being written (sql/logistics_hub--A--B.sql) gets a section per piece of
work; a later definition of a function overrides an earlier one.  When two
branches both redefine a function, each section carries its own version, and
after the merge the last one wins silently.  This lists every function and
function comment that sql/src and the step both define whose LAST definition
in the step differs from sql/src's (and step-only ones: renamed or dropped
signatures, to look at), and with --write appends sql/src's definitions of the
differing ones (CREATE OR REPLACE) just before the step's
'-- ==== ... end' line.  test/sql/zz_upgrade.sql then judges the result: it
compares the whole catalogue, tables and views too, which this does not.
A developer's tool: no test runs it."""
import re, sys, glob

def statements(text):
    """split SQL text into statements (dollar-quote, quote and comment aware)"""
    out, i, start, n = [], 0, 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith('--', i):
            j = text.find('\n', i); i = n if j < 0 else j + 1; continue
        if text.startswith('/*', i):
            j = text.find('*/', i + 2); i = n if j < 0 else j + 2; continue
        if c == "'":
            i += 1
            while i < n:
                if text[i] == "'" and i + 1 < n and text[i + 1] == "'": i += 2; continue
                if text[i] == "'": break
                i += 1
            i += 1; continue
        if c == '"':
            j = text.find('"', i + 1); i = j + 1; continue
        if c == '$':
            m = re.match(r'\$([A-Za-z_][A-Za-z_0-9]*)?\$', text[i:])
            if m:
                tag = m.group(0); j = text.find(tag, i + len(tag)); i = j + len(tag); continue
        if c == ';':
            out.append(text[start:i + 1].strip()); start = i + 1
        i += 1
    return out

def strip_comments_head(s):
    while True:
        s = s.lstrip()
        if s.startswith('--'):
            j = s.find('\n'); s = '' if j < 0 else s[j + 1:]
        elif s.startswith('/*'):
            s = s[s.find('*/') + 2:]
        else:
            return s

def key(stmt):
    s = strip_comments_head(stmt)
    m = re.match(r'CREATE\s+(?:OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE)\s+([\w.]+)\s*\(', s, re.I)
    if m:
        # argument types: text between the parens (balanced)
        i = m.end(); depth = 1; j = i
        while depth:
            if s[j] == '(': depth += 1
            elif s[j] == ')': depth -= 1
            j += 1
        args = s[i:j - 1]
        types = []
        for a in split_args(args):
            a = re.sub(r'\s+DEFAULT\s+.*$', '', a.strip(), flags=re.I | re.S)
            a = re.sub(r'^(IN|OUT|INOUT|VARIADIC)\s+', lambda mm: mm.group(0) if mm.group(1).upper() in ('OUT', 'VARIADIC') else '', a, flags=re.I)
            if re.match(r'OUT\s', a, re.I): continue
            parts = a.split(None, 1)
            t = parts[1] if len(parts) == 2 and not parts[0].lower() in ('double', 'timestamp', 'character', 'bit') else a
            types.append(re.sub(r'\s+', ' ', t.strip().lower()))
        return ('F', m.group(2).lower(), tuple(types)), s
    m = re.match(r'COMMENT\s+ON\s+(FUNCTION|PROCEDURE)\s+([\w.]+)\s*\(([^)]*)\)', s, re.I)
    if m:
        types = tuple(re.sub(r'\s+', ' ', t.strip().lower()) for t in m.group(3).split(',') if t.strip())
        return ('C', m.group(2).lower(), types), s
    return None, s

def split_args(a):
    out, depth, cur = [], 0, ''
    for ch in a:
        if ch == '(': depth += 1
        if ch == ')': depth -= 1
        if ch == ',' and depth == 0:
            out.append(cur); cur = ''
        else:
            cur += ch
    if cur.strip(): out.append(cur)
    return out

def norm(s):
    s = re.sub(r'^CREATE\s+OR\s+REPLACE\s+', 'CREATE ', s.strip(), flags=re.I)
    return re.sub(r'\s+', ' ', s).strip()

src_dir, step = sys.argv[1], sys.argv[2]
src = {}
for f in sorted(glob.glob(src_dir + '/*.sql')):
    for st in statements(open(f).read()):
        k, s = key(st)
        if k: src[k] = s
steptext = open(step).read()
last = {}
for st in statements(steptext):
    k, s = key(st)
    if k: last[k] = s
diff = [k for k in last if k in src and norm(last[k]) != norm(src[k])]
missing = [k for k in last if k not in src]
for k in diff: print('differs:', k)
for k in missing: print('step-only (renamed/dropped? check):', k)
if '--write' in sys.argv and diff:
    order = sorted(diff, key=lambda k: (k[1], k[2], k[0] != 'F'))
    body = '-- ================================================================ merged\n' \
           '-- (the definitions of sql/src for objects that two branches both redefined above)\n\n' + \
           '\n\n'.join(re.sub(r'^CREATE\s+FUNCTION', 'CREATE OR REPLACE FUNCTION', src[k]) for k in order) + '\n\n'
    marker = '-- ================================================================ end'
    assert steptext.count(marker) == 1
    if '-- ================================================================ merged\n' in steptext:
        # extend the existing merged section
        steptext = steptext.replace(marker, '\n\n'.join(re.sub(r'^CREATE\s+FUNCTION', 'CREATE OR REPLACE FUNCTION', src[k]) for k in order) + '\n\n' + marker)
    else:
        steptext = steptext.replace(marker, body + marker)
    open(step, 'w').write(steptext)
    print('appended', len(diff))
