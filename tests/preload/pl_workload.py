# pl_workload.py - a Python program that builds many identical large
# objects (tests/preload/pl_python.sh runs it with and without libdedup).
# stdout: what the program computes (must be identical in both runs);
# stderr: "pss_kb_before=... pss_kb_after=... merge_s=..." for the report.
# Under libdedup it waits for merging, through dedup_stats: until Pss is
# down to argv[2] kB (if given: the work merging must do, however long a
# busy machine takes for it) and merging stops making progress, at most
# 180 s ($DEDUP_TEST_CAP_S), then goes on and lets the caller judge.
import ctypes, hashlib, os, sys, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
PSS_TARGET = int(sys.argv[2]) if len(sys.argv) > 2 else None
CAP = float(os.environ.get("DEDUP_TEST_CAP_S") or 0) or 180.0

def pss_kb():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])

class Stats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "size pages_scanned full_passes candidates pages_sharing pages_shared "
        "zero_pages merges cow_breaks skipped_volatile skipped_budget "
        "skipped_pinned skipped_mismatch skipped_raced vmas_added vma_budget "
        "bytes_saved metadata_bytes regions bytes_registered engine_cpu_ns "
        "store_slots_freed pages_skipped_smart").split()]

def dedup_stats():
    try:
        f = ctypes.CDLL(None).dedup_stats
    except AttributeError:
        return None
    s = Stats(size=ctypes.sizeof(Stats))
    return s if f(ctypes.byref(s)) == 0 else None

# 1 MiB of 256 different 4 KiB pages. (bytes(range(256)) * 4096 would make
# every page equal: each merged page would then be a mapping of its own, and
# the engine's VMA budget, not the memory, would be the limit.)
base = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() * 128
                for i in range(256))
objs = [bytearray(base) for _ in range(N)]         # N distinct objects
pss0 = pss_kb()
t0 = time.monotonic()
t_merged = 0.0
if dedup_stats() is not None:
    # wait until Pss is down to the target and merging stops making
    # progress (1 s without a change), or CAP s
    last, still = -1, 0
    while time.monotonic() - t0 < CAP:
        s = dedup_stats()
        saved = s.bytes_saved
        if saved == last and saved > 0:
            still += 1
            if still >= 10 and (PSS_TARGET is None or pss_kb() <= PSS_TARGET):
                break
        else:
            still = 0
            t_merged = time.monotonic() - t0
        last = saved
        time.sleep(0.1)
pss1 = pss_kb()

h = hashlib.sha256()
for o in objs:
    h.update(o)
print("objects", len(objs), "sha256", h.hexdigest())
print("equal", all(o == base for o in objs))
# write into half of them; the others must not change
for i in range(0, N, 2):
    objs[i][i * 4096 + 17] ^= 0xff
h = hashlib.sha256()
for o in objs:
    h.update(o)
print("after writes sha256", h.hexdigest())
print("unchanged", sum(1 for o in objs if o == base))
print(f"pss_kb_before={pss0} pss_kb_after={pss1} merge_s={t_merged:.2f}", file=sys.stderr)
s = dedup_stats()
if s is not None:
    print(" ".join(f"{n}={getattr(s, n)}" for n, _ in Stats._fields_[1:]), file=sys.stderr)
