import re, collections
txt = open("/tmp/spec_small.hlo").read()
comps = {}; cur = None
for line in txt.splitlines():
  m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$", line)
  if m: cur = m.group(1); comps[cur] = []; continue
  if cur: comps[cur].append(line)
bodies = set(re.findall(r"body=%?([\w.\-]+)", txt))
print("while bodies", len(bodies))
sizes = {"f32": 4, "s32": 4, "bf16": 2, "pred": 1, "u32": 4}
for b in bodies:
  lines = comps.get(b, [])
  copies = [l for l in lines if re.search(r"\} copy\(", l)]
  tot = 0
  for l in copies:
    m = re.search(r"= (\w+)\[([\d,]*)\]", l); e = 1
    for x in m.group(2).split(","):
      if x: e *= int(x)
    tot += e * sizes.get(m.group(1), 4)
  ops = collections.Counter(re.findall(r"\} (\w[\w-]*)\(", "\n".join(lines)))
  print(b, "lines", len(lines), "copies", len(copies), "bytes", tot, ops.most_common(8))
  for l in sorted(copies, key=len)[:0]: print(l)
