"""Device check of the data store on CUDA (prepared, not yet run on a GPU): the memory store (whole on
the GPU) and the disk store (gathered per batch, pinned, non_blocking copy) must give identical weights
with train.deterministic=true. On CPU (`python benchmarks/store_gpu_check.py cpu`) both stores gave
identical weights (2026-11-27). Usage: PYTHONPATH=src python3 benchmarks/store_gpu_check.py cuda"""
import hashlib, os, sys, time, tempfile
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, "src")
from PIL import Image
from ccn import config as cfgmod
from ccn.pipeline import run_training
from ccn.tracking import RunLog
from ccn.data import load_dataset
from ccn.data.prepare import prepare_data
from ccn.plan import DataFacts, resolve

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
scratch = Path(tempfile.mkdtemp())
os.environ["CCN_CACHE_DIR"] = str(scratch / "cache")
rng = np.random.default_rng(0)
for split, count in (("train", 60), ("test", 10)):
    for c in range(4):
        d = scratch / "d" / split / f"c{c}"; d.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((40, 40)).save(d / f"{i}.png")
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
hashes = {}
for store in ("memory", "disk"):
    sets = [f"data.store={store}", "data.name=folder", f"data.root={scratch / 'd'}", "data.image_size=32",
            "data.val_fraction=0.2", "train.epochs=3", "method.probe_epochs=1", "method.groups=2",
            "train.batch_size=16", "train.progress=false", "train.deterministic=true", f"device={device}"]
    config = cfgmod.load(None, sets)
    ds = load_dataset(config.data)
    data = prepare_data(resolve(config, DataFacts.of(ds)), torch.device(device), ds=ds)
    print(store, "train images held as", type(data.train.images).__name__,
          getattr(data.train.images, "device", "per-batch gather"), "| test", type(data.test.images).__name__)
    xb, yb = next(iter(data.train.epoch(1)))
    print(store, "first batch", tuple(xb.shape), xb.device, float(xb.double().sum()))
    out = scratch / store; out.mkdir()
    start = time.perf_counter()
    results = run_training(config, out, RunLog(out, enabled=False))
    hashes[store] = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()[:16]
    print(store, f"top1 {100 * results['top1']:.2f}%", f"{time.perf_counter() - start:.1f}s", hashes[store])
print("IDENTICAL" if hashes["memory"] == hashes["disk"] else "DIFFERENT", hashes)
