#!/usr/bin/env python3
"""Check dataset trees, convert their annotations once into the COCO-JSON caches, report counts.

    python tools/prepare_datasets.py                      # all: cityscapes foggy sim10k synthetic sim2real
    python tools/prepare_datasets.py cityscapes foggy     # some
    python tools/prepare_datasets.py synthetic            # generate the demo pair (what `make demo` needs)
    python tools/prepare_datasets.py sim2real             # generate the sim -> real pair (sim and real)
    python tools/prepare_datasets.py sim2real --sim2real-parts all     # and the one-part real variants
    python tools/prepare_datasets.py --preview docs/sim2real_pair.png  # only its picture (renders, writes no data)
    python tools/prepare_datasets.py --manifest my_pair.yaml          # your own domain pair (repeatable)
    python tools/prepare_datasets.py sim10k --verify-images           # also decode every image in full
    options: --root DIR (default $DETECTRON2_DATASETS or datasets/; also what ${DETECTRON2_DATASETS} means
             in a manifest), --check (report only, convert nothing), --workers N (mask / image decoding
             processes), --rebuild (drop the caches and the generated pairs first),
             --make-list (Sim10k: write ImageSets/Main/trainval.txt from Annotations/*.xml when absent),
             --sim2real-parts PART[,PART]|all (sim2real: also the real variants with one part alone; they are
             otherwise generated on first use), --preview PNG (the sim -> real pair's picture: the same scenes
             in the sim style, the real style and each part alone; given alone, only the picture)

For each dataset: what is missing, and which archive it comes from; then the conversion (progress bar) and a
table of images and boxes per registered name and class, i.e. exactly what DatasetCatalog.get returns.
For a pair manifest: its three sets, each file or folder it needs that is missing, then the same table
(an unlabelled target is reported as "unlabelled (images only)"). --verify-images decodes every image of
what was loaded and lists each that fails (loading itself only reads headers and end markers).
Exit status 0 when every requested dataset is ready, 1 otherwise, 2 for bad arguments or a bad manifest
(one "error:" line naming the file and key). Expected trees: datasets/README.md.
"""
import argparse
import contextlib
import glob
import logging
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # imported, not run: tools/ for _toolstart
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _toolstart  # noqa: E402  (stdlib only: the start-up line, library notices kept off the console)

_toolstart.begin("prepare_datasets.py")

# isort: split
import metaalign_det  # noqa: E402,F401  (compat before detectron2)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from metaalign_det.data.datasets import builtin  # noqa: E402
from metaalign_det.data.datasets.cityscapes_foggy import (  # noqa: E402
    ARCHIVES,
    DOWNLOAD_PAGE,
    FOGGY_BETAS,
    gtfine_cache_file,
    load_gtfine_annotations,
)
from metaalign_det.data.datasets.coco_cache import cache_dir_for  # noqa: E402
from metaalign_det.data.datasets.image_files import collect_unreadable_images, verify_image  # noqa: E402
from metaalign_det.data.datasets.sim2real import (  # noqa: E402
    ensure_sim2real,
    preview_grid,
    sim2real_is_current,
    sim2real_root,
    variant_name,
)
from metaalign_det.data.datasets.sim2real_render import PARTS as SIM2REAL_PARTS  # noqa: E402
from metaalign_det.data.datasets.sim10k import SIM10K_ARCHIVES  # noqa: E402
from metaalign_det.data.datasets.synthetic import (  # noqa: E402
    ensure_synthetic_pair,
    synthetic_pair_dir,
    synthetic_pair_is_current,
)
from metaalign_det.data.pairs import (  # noqa: E402
    ROLES,
    describe_set,
    load_manifest,
    pair_dataset_names,
    register_domain_pair,
    registered_pairs,
)
from metaalign_det.engine.output_dir import check_output_dir  # noqa: E402

DATASETS = ("cityscapes", "foggy", "sim10k", "synthetic", "sim2real")
EXPECTED = {"train": 2975, "val": 500}  # Cityscapes gtFine scenes per split
SIM10K_EXPECTED = 10000
SIM10K_PAGE = "https://fcav.engin.umich.edu/projects/driving-in-the-matrix"


def _count_files(d, suffix):
    return sum(1 for _ in glob.iglob(os.path.join(d, "*", f"*{suffix}"))) if os.path.isdir(d) else 0


def check_cityscapes(root, foggy=False):
    """(problems, notes): what is missing (with its archive) and what looks incomplete."""
    cs = os.path.join(root, "cityscapes")
    problems, notes = [], []
    if not os.path.isdir(cs):
        need = [ARCHIVES["leftImg8bit"], ARCHIVES["gtFine"]] + ([ARCHIVES["leftImg8bit_foggy"]] if foggy else [])
        return [f"missing {cs}/ (download {', '.join(need)} from {DOWNLOAD_PAGE} and unzip them there)"], notes
    folders = [("gtFine", "_gtFine_instanceIds.png"),
               ("leftImg8bit_foggy", None) if foggy else ("leftImg8bit", "_leftImg8bit.png")]
    for split, expected in EXPECTED.items():
        for folder, suffix in folders:
            d = os.path.join(cs, folder, split)
            if not os.path.isdir(d):
                problems.append(f"missing {d}/ (from {ARCHIVES[folder]}, {DOWNLOAD_PAGE})")
                continue
            if folder == "leftImg8bit_foggy":
                for beta in FOGGY_BETAS:
                    n = _count_files(d, f"_leftImg8bit_foggy_beta_{beta}.png")
                    if n == 0:
                        problems.append(f"no beta={beta} images in {d}/ (from {ARCHIVES[folder]})")
                    elif n != expected:
                        notes.append(f"{d}: {n} beta={beta} images, the full release has {expected:,}")
            else:
                n = _count_files(d, suffix)
                if n == 0:
                    problems.append(f"no *{suffix} in {d}/ (from {ARCHIVES[folder]})")
                elif n != expected:
                    notes.append(f"{d}: {n} *{suffix} files, the full release has {expected:,}")
    return problems, notes


def check_sim10k(root, make_list=False):
    voc = os.path.join(root, "sim10k", "VOC2012")
    problems, notes = [], []
    if not os.path.isdir(voc):
        return [f"missing {voc}/ (extract {SIM10K_ARCHIVES['images']} and {SIM10K_ARCHIVES['annotations']} "
                f"from {SIM10K_PAGE} so that it holds JPEGImages/ and Annotations/)"], notes
    for sub, archive in (("JPEGImages", SIM10K_ARCHIVES["images"]), ("Annotations", SIM10K_ARCHIVES["annotations"])):
        if not os.path.isdir(os.path.join(voc, sub)):
            problems.append(f"missing {os.path.join(voc, sub)}/ (from {archive}, {SIM10K_PAGE})")
    list_file = os.path.join(voc, "ImageSets", "Main", "trainval.txt")
    if not os.path.isfile(list_file):
        xmls = sorted(glob.glob(os.path.join(voc, "Annotations", "*.xml")))
        if make_list and xmls:
            os.makedirs(os.path.dirname(list_file), exist_ok=True)
            tmp = list_file + ".tmp"
            with open(tmp, "w") as f:
                f.write("".join(os.path.splitext(os.path.basename(x))[0] + "\n" for x in xmls))
            os.replace(tmp, list_file)
            notes.append(f"wrote {list_file} ({len(xmls)} ids from Annotations/*.xml)")
        else:
            problems.append(f"missing {list_file} (comes with {SIM10K_ARCHIVES['annotations']}; or run with "
                            f"--make-list to write it from Annotations/*.xml)")
    else:
        with open(list_file) as f:
            n = sum(1 for line in f if line.strip())
        if n != SIM10K_EXPECTED:
            notes.append(f"{list_file}: {n} ids, the full release has {SIM10K_EXPECTED:,}")
    return problems, notes


def sim2real_variants(parts):
    """The sim -> real variants to prepare: sim, real, and ``real_<part>`` for each of ``parts``."""
    return ["sim", "real"] + [f"real_{p}" for p in parts]


def sim2real_names(variants):
    """Registered names of ``variants``, in registration order."""
    return [n for n, (domain, part, _) in builtin.SIM2REAL_SPLITS.items() if variant_name(domain, part) in variants]


def parse_parts(text):
    """``--sim2real-parts`` value -> the parts, in PARTS order; ValueError naming a bad one."""
    if text is None:
        return []
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(SIM2REAL_PARTS)
    bad = [t for t in items if t not in SIM2REAL_PARTS]
    if bad or not items:
        raise ValueError(f"--sim2real-parts: {bad[0] if bad else text!r} is not a part; expected a comma-separated "
                         f"list of {', '.join(SIM2REAL_PARTS)}, or all")
    return [p for p in SIM2REAL_PARTS if p in items]


def write_preview(path):
    """Write the sim -> real pair's picture (:func:`preview_grid`) as a PNG, atomically; returns its size in bytes."""
    import cv2
    import numpy as np

    from metaalign_det.utils.io import atomic_write_bytes

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(preview_grid()[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:  # pragma: no cover - OpenCV always has a PNG codec
        raise OSError(f"could not encode {path}")
    atomic_write_bytes(path, buf.tobytes())
    return len(buf)


def count_table(names, records=None):
    """Rows: name, images, images without objects, boxes per class, crowd, difficult.

    ``records``: name -> dataset dicts already loaded (default: ``DatasetCatalog.get``). An unlabelled set
    (no record has ``annotations``) gets ``None`` for the objects and the per-class counts.
    """
    rows = []
    for name in names:
        recs = records[name] if records is not None else DatasetCatalog.get(name)
        if recs and not any("annotations" in r for r in recs):
            rows.append((name, len(recs), None, None, 0, 0))
            continue
        classes = MetadataCatalog.get(name).thing_classes
        per_class = [0] * len(classes)
        crowd = difficult = empty = 0
        for r in recs:
            objs = [a for a in r["annotations"] if not a.get("iscrowd", 0)]
            empty += not objs
            for a in r["annotations"]:
                if a.get("iscrowd", 0):
                    crowd += 1
                else:
                    per_class[a["category_id"]] += 1
                difficult += int(a.get("difficult", 0))
        rows.append((name, len(recs), empty, dict(zip(classes, per_class)), crowd, difficult))
    return rows


def print_table(rows, out=None):
    out = out or sys.stdout
    for name, n, empty, per_class, crowd, difficult in rows:
        if per_class is None:
            print(f"  {name:<38} images={n:<6} unlabelled (images only)", file=out)
            continue
        classes = "  ".join(f"{c}={k}" for c, k in per_class.items())
        extra = (f"  crowd={crowd}" if crowd else "") + (f"  difficult={difficult}" if difficult else "")
        print(f"  {name:<38} images={n:<6} no-object={empty:<5} {classes}{extra}", file=out)


def pair_problems(definition):
    """One line per file or folder a pair's sets need and lack (a registered set is checked when loaded)."""
    problems = []
    for role in ROLES:
        spec = definition[role]
        if spec is None:  # an optional set the pair does not have (no labelled target test set)
            continue
        need = []
        if spec["type"] == "coco":
            need = [(spec["json"], "annotation file", os.path.isfile),
                    (spec["image_root"], "image folder", os.path.isdir)]
        elif spec["type"] == "voc":
            root = spec["root"]
            need = [(root, "VOC root", os.path.isdir),
                    (os.path.join(root, "ImageSets", "Main", f"{spec['split']}.txt"), "split list", os.path.isfile),
                    (os.path.join(root, spec["ann_dir"]), "annotation folder", os.path.isdir),
                    (os.path.join(root, spec["image_dir"]), "image folder", os.path.isdir)]
        elif spec["type"] == "images":
            need = [(spec["root"], "image folder", os.path.isdir)]
        for path, what, exists in need:
            if not exists(path):
                problems.append(f"{role}: missing {what} {path}")
                if what == "VOC root":
                    break  # everything under it is missing too
    return problems


@contextlib.contextmanager
def datasets_root_env(root):
    """``$DETECTRON2_DATASETS`` = ``root`` inside the block (what a manifest's ``${DETECTRON2_DATASETS}`` means)."""
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = root
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DETECTRON2_DATASETS", None)
        else:
            os.environ["DETECTRON2_DATASETS"] = old


def register_manifests(paths, root):
    """[(manifest path, pair name, normalised definition)]; a bad manifest raises ValueError/FileNotFoundError."""
    out = []
    with datasets_root_env(root):
        for path in paths:
            m = load_manifest(path)
            register_domain_pair(**m, _origin=f"pair manifest {path}")
            out.append((path, m["name"], registered_pairs()[m["name"]]["definition"]))
    return out


def decode_all(paths, workers=None):
    """{path: reason} of the images in ``paths`` that fail a full decode (a process pool when worth it)."""
    from tqdm import tqdm

    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    bar = dict(total=len(paths), desc="decoding images", unit="img", mininterval=1.0)
    if workers == 1 or len(paths) < 64:
        reasons = [verify_image(p) for p in tqdm(paths, **bar)]
    else:
        import multiprocessing

        # as the Cityscapes mask decoding: fork where it exists (no re-import of torch per worker)
        with multiprocessing.get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            reasons = list(tqdm(pool.imap(verify_image, paths, chunksize=16), **bar))
    return {p: r for p, r in zip(paths, reasons) if r is not None}


def report_unreadable(skipped_at_load, records, verify, workers, listed=20):
    """Print what loading skipped and (``verify``) what fails a full decode; return False if anything did."""
    skipped = dict(skipped_at_load)
    if not verify:
        if skipped:
            first, reason = next(iter(skipped.items()))
            print(f"  note: {len(skipped)} unreadable image(s) skipped at load, first {first} ({reason}); "
                  f"--verify-images lists them all")
        return True
    paths = sorted({r["file_name"] for recs in records.values() for r in recs})
    failed = decode_all(paths, workers)
    bad = {**skipped, **failed}
    total = len(paths) + len(skipped)
    if not bad:
        print(f"  all {total} images decode")
        return True
    print(f"  UNREADABLE: {len(bad)} of {total} images ({len(skipped)} skipped at load: bad header or cut short; "
          f"{len(failed)} fail a full decode):")
    for path in sorted(bad)[:listed]:
        print(f"   - {path} ({bad[path]})")
    if len(bad) > listed:
        print(f"   ... and {len(bad) - listed} more")
    return False


def load_sets(names):
    """({name: records}, [(path, reason)] skipped at load) of every name."""
    with collect_unreadable_images() as skipped:
        records = {name: DatasetCatalog.get(name) for name in names}
    return records, skipped


def check_pair(path, name, definition, check_only, verify, workers):
    """Report one manifest's pair; return True when it is ready."""
    print(f"\n== pair {name} ({path})")
    for role in ROLES:
        spec = definition[role]
        print(f"  {role:<7} " + (describe_set(spec) if spec is not None
                                  else "none (no labelled target test set: training only, no target AP)"))
    problems = pair_problems(definition)
    if problems:
        print("  NOT READY:")
        for p in problems:
            print(f"   - {p}")
    if check_only:
        if not problems:
            print("  files present (not loaded: --check)")
        return not problems
    # load every set whose files are there: all errors at once, not one per run
    missing = {p.split(":")[0] for p in problems}
    names = [pair_dataset_names(name)[r] for r in ROLES if r not in missing and definition[r] is not None]
    records, ok = {}, not problems
    with collect_unreadable_images() as skipped:
        for n in names:
            try:
                records[n] = DatasetCatalog.get(n)
            except (OSError, ValueError) as e:
                print(f"  ERROR ({n}): {e}")
                ok = False
    if records:
        print_table(count_table(list(records), records))
        ok = report_unreadable(skipped, records, verify, workers) and ok
    return ok


def _generates(wanted, root, parts, rebuild) -> bool:
    """Whether preparing ``wanted`` generates a pair (synthetic, sim2real) under ``root``."""
    if "synthetic" in wanted and (rebuild or not synthetic_pair_is_current(root)):
        return True
    return "sim2real" in wanted and (rebuild or not all(sim2real_is_current(root, v)
                                                        for v in sim2real_variants(parts)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", metavar="DATASET",
                    help=f"any of {', '.join(DATASETS)}, or all (default, unless --manifest is given)")
    ap.add_argument("--root", default=None, help="datasets root (default $DETECTRON2_DATASETS or datasets/)")
    ap.add_argument("--manifest", action="append", default=[], metavar="YAML",
                    help="a domain-pair manifest to check like the builtin datasets (repeatable)")
    ap.add_argument("--check", action="store_true", help="only check the trees; convert and count nothing")
    ap.add_argument("--verify-images", action="store_true",
                    help="decode every image in full and list those that fail (slow: minutes for Cityscapes)")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes decoding Cityscapes masks and, with --verify-images, images (default: auto)")
    ap.add_argument("--rebuild", action="store_true", help="delete the annotation caches and generated pairs first")
    ap.add_argument("--make-list", action="store_true", help="Sim10k: write trainval.txt from Annotations/ if absent")
    ap.add_argument("--sim2real-parts", default=None, metavar="PARTS",
                    help=f"sim2real: also the real variants with one part alone: comma-separated "
                         f"{','.join(SIM2REAL_PARTS)}, or all")
    ap.add_argument("--preview", default=None, metavar="PNG",
                    help="write the sim -> real pair's picture (sim, real, each part alone) to this PNG")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    unknown = [d for d in args.datasets if d not in DATASETS + ("all",)]
    if unknown:
        ap.error(f"unknown dataset(s) {unknown}; choose from {', '.join(DATASETS)}, all")
    if args.verify_images and args.check:
        ap.error("--verify-images decodes what is loaded; --check loads nothing: give one of them")
    try:
        parts = parse_parts(args.sim2real_parts)
    except ValueError as e:
        ap.error(str(e))
    if not args.datasets:
        wanted = () if args.manifest or args.preview else DATASETS
    else:
        wanted = DATASETS if "all" in args.datasets else tuple(dict.fromkeys(args.datasets))
    if parts and "sim2real" not in wanted:
        ap.error("--sim2real-parts prepares sim2real variants: name sim2real among the datasets (or none: all)")
    root = os.path.abspath(args.root or builtin.datasets_root())
    builtin.register_all_builtin(root, overwrite=True)
    print(f"datasets root: {root}")
    if not args.check and _generates(wanted, root, parts, args.rebuild):
        # generating a pair writes under the root: an unusable root is one line now, not an error per dataset
        key = "--root" if args.root or not os.environ.get("DETECTRON2_DATASETS") else "DETECTRON2_DATASETS"
        try:
            check_output_dir(root, key=key)
        except ValueError as e:
            print(f"prepare_datasets.py: error: {e}", file=sys.stderr)
            return 2
    try:
        pairs = register_manifests(args.manifest, root)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ok = True
    if args.preview:
        size = write_preview(args.preview)
        print(f"\n== sim2real preview\n  wrote {args.preview} ({size // 1024} KB)")
    for ds in wanted:
        print(f"\n== {ds}")
        if ds in ("cityscapes", "foggy"):
            problems, notes = check_cityscapes(root, foggy=(ds == "foggy"))
        elif ds == "sim10k":
            problems, notes = check_sim10k(root, make_list=args.make_list)
        else:
            problems, notes = [], []
        for n in notes:
            print(f"  note: {n}")
        if problems:
            ok = False
            print("  NOT READY:")
            for p in problems:
                print(f"   - {p}")
            continue
        if args.check:
            if ds == "synthetic":
                print("  generated, stamp up to date" if synthetic_pair_is_current(root)
                      else "  not generated yet (done on first use, or now without --check; ~15 s)")
            elif ds == "sim2real":
                for v in sim2real_variants(parts):
                    print(f"  {v:<13} " + ("generated, stamp up to date" if sim2real_is_current(root, v) else
                                           "not generated yet (done on first use, or now without --check)"))
            else:
                print("  tree complete (not converted: --check)")
            continue
        try:
            if ds in ("cityscapes", "foggy"):
                cs = os.path.join(root, "cityscapes")
                for split in EXPECTED:
                    if args.rebuild and os.path.exists(gtfine_cache_file(cs, split)):
                        os.remove(gtfine_cache_file(cs, split))
                    load_gtfine_annotations(cs, split, workers=args.workers)
                names = [n for n, (_, betas, _) in builtin.CITYSCAPES_SPLITS.items()
                         if (betas is None) == (ds == "cityscapes")]
            elif ds == "sim10k":
                if args.rebuild:
                    shutil.rmtree(cache_dir_for(os.path.join(root, "sim10k", "VOC2012")), ignore_errors=True)
                names = list(builtin.SIM10K_SPLITS)
            elif ds == "synthetic":
                if args.rebuild:
                    shutil.rmtree(synthetic_pair_dir(root), ignore_errors=True)
                ensure_synthetic_pair(root)
                names = list(builtin.SYNTHETIC_SPLITS)
            else:
                if args.rebuild:  # every variant, also the one-part ones not asked for (regenerated on use)
                    shutil.rmtree(sim2real_root(root), ignore_errors=True)
                for v in sim2real_variants(parts):
                    ensure_sim2real(root, v)
                names = sim2real_names(sim2real_variants(parts))
            records, skipped = load_sets(names)
            print_table(count_table(names, records))
        except (OSError, ValueError) as e:
            ok = False
            print(f"  ERROR: {e}")
            continue
        ok = report_unreadable(skipped, records, args.verify_images, args.workers) and ok
    for path, name, definition in pairs:
        ok = check_pair(path, name, definition, args.check, args.verify_images, args.workers) and ok
    print("\nall requested datasets are ready" if ok else "\nsome requested datasets are not ready (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
