"""Promotion with real epoch files as trainers write them: the copy's tensors bit for bit, the metadata kept and
extended, the source untouched, nothing ever overwritten, a changed file refused, the card and grid image beside;
two processes shipping one name at once: one release, whole, and one refusal."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import struct
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save, save_file

from lora_spectrum import demo
from lora_spectrum.decision import promotion
from lora_spectrum.decision.card_text import text
from lora_spectrum.decision.promotion import Promotion, copy_with_metadata, promote, release_lock
from lora_spectrum.demo.synthetic_epochs import growth, kohya_metadata, make_lora_state_dict
from lora_spectrum.errors import ShipError
from lora_spectrum.loras.catalog import READY, Catalog, file_sha256
from lora_spectrum.loras.hashes import addnet_hash
from lora_spectrum.loras.lora_keys import read_header
from lora_spectrum.measures.insight import series_insight
from lora_spectrum.measures.verdict import Verdict, decide
from lora_spectrum.records.grid_files import encode_png, parameters_text, parse_parameters, write_outputs
from lora_spectrum.render.plan import Plan, plan_cells
from lora_spectrum.render.sampling import Sampling
from tests import trainer_files
from tests.measures.test_probe_measures import write_probe
from tests.processes import together

SERIES = "inkstyle"
KOHYA = {  # what sd-scripts adds to the demo writer's keys in a real SDXL run
    "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit", "ss_lr_scheduler": "cosine", "ss_unet_lr": "0.0001",
    "ss_text_encoder_lr": "5e-05", "ss_max_train_steps": "60", "ss_num_train_images": "40",
    "ss_resolution": "(1024, 1024)", "ss_mixed_precision": "bf16", "ss_seed": "42",
    "ss_training_started_at": "1712345678.25", "ss_session_id": "1234567890", "sshs_model_hash": "f" * 64,
    "ss_sd_model_name": "sd_xl_base_1.0.safetensors", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
    "ss_dataset_dirs": json.dumps({"10_inkstyle": {"n_repeats": 10, "img_count": 40}}),
}


@pytest.fixture(scope="module")
def unet():
    return demo.build_tiny("sdxl", seed=0).unet


def write_epoch(folder, unet, epoch, name=SERIES, drop=(), **extra):
    """``name-00000N.safetensors`` as kohya sd-scripts saves an SDXL epoch: fp16 factors, fp32 alphas, ss_* keys."""
    sd = make_lora_state_dict(unet, "sdxl", rank=4, magnitude=growth(epoch * 30), seed=1, noise=0.05,
                              noise_seed=epoch, dtype=torch.float16)
    meta = {**kohya_metadata(name, epoch, 10, 4, 4.0, "sdxl", 6), **KOHYA, **extra}
    path = folder / f"{name}-{epoch:06d}.safetensors"
    save_file(sd, str(path), metadata={k: v for k, v in meta.items() if k not in drop})
    return path


@pytest.fixture
def run(tmp_path, unet):
    loras = tmp_path / "loras"
    loras.mkdir()
    paths = {e: write_epoch(loras, unet, e) for e in (2, 4, 6)}
    catalog = Catalog(loras)
    catalog.scan()
    return catalog, paths, tmp_path / "shipped"


def write_grid(folder, catalog: Catalog):
    """A grid folder as ``grid_files.write_outputs`` writes it, from solid-colour cells (nothing rendered)."""
    entries = catalog.choose_series()[1]
    plan = Plan(columns=[None, *entries], seeds=[1, 2], strengths=[0.8, 1.0], prompts=["an ink fox, inkstyle style"],
                sampling=Sampling("blurry", 20, 5.5, 64, 64, "Euler"))
    cells = plan_cells(plan, catalog)
    for c in cells:
        c.image = Image.new("RGB", (64, 64), (c.column * 60, c.seed * 40, int(c.strength * 100)))
        entry = plan.columns[c.column]  # the hash as ``runs.run_plan`` writes it
        c.png = encode_png(c.image, parameters_text(c, plan.sampling, "sdxl-base",
                                                    lora_hash=addnet_hash(entry.path) if entry else None))
    write_outputs(folder, plan, cells, "stabilityai/stable-diffusion-xl-base-1.0", "sdxl")
    return folder


def tensor_bytes(path) -> dict[str, tuple]:
    with safe_open(str(path), framework="pt") as f:
        return {k: (str(t.dtype), tuple(t.shape), t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
                for k in f.keys() for t in [f.get_tensor(k)]}


def data_section(path) -> bytes:
    header = read_header(path, os.path.getsize(path))
    with open(path, "rb") as fh:
        fh.seek(header.data_start)
        return fh.read()


def metadata(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def listing(folder) -> list[str]:
    """What a folder holds (its lock file lives outside it: ``promotion.release_lock``)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("kind", ["kohya lora fp16", "lycoris loha bf16"])
def test_the_copy_holds_the_sources_tensors_bit_for_bit(tmp_path, unet, kind):
    loras = tmp_path / "loras"
    loras.mkdir()
    if kind.startswith("lycoris"):  # sd-scripts with network_module=lycoris.kohya
        source = loras / "loharun-000003.safetensors"
        trainer_files.write(source, "sdxl", unet, "loha", epoch=3, dtype=torch.bfloat16)
        epoch = 3
    else:
        source, epoch = write_epoch(loras, unet, 6), 6
    catalog = Catalog(loras)
    catalog.scan()
    done = promote(catalog, epoch, tmp_path / "shipped")
    assert tensor_bytes(done.path) == tensor_bytes(source)
    assert data_section(done.path) == data_section(source)
    assert read_header(done.path, os.path.getsize(done.path)).data_start % 8 == 0  # padded as safetensors pads
    assert done.sha256 == file_sha256(source) and done.source == source.name and done.epoch == epoch
    assert os.stat(done.path).st_mode == os.stat(done.card).st_mode  # a release file, not a private temporary
    # The copy is a valid epoch file in its own right: the catalog reads it as ready, with the same epoch.
    shipped = Catalog(done.path.parent)
    (entry,) = shipped.scan()
    assert entry.state == READY and entry.epoch == epoch and entry.ranks == catalog.entries[0].ranks


def test_the_metadata_keeps_every_trainer_key_and_adds_provenance(run):
    catalog, paths, out = run
    trainer = metadata(paths[6])
    ranking = {"votes": 20, "epochs": [{"file": paths[6].name, "epoch": 6, "rank": 1, "score": 0.9, "stderr": 0.3,
                                        "votes": 12}]}
    rows = [{"epoch": 6, "file": paths[6].name, "weight_norm": 2.5, "relative_change": 0.02}]
    insight = {"epochs": rows, "verdict": decide(SERIES, rows).to_json()}
    done = promote(catalog, 6, out, note="clean lines", ranking=ranking, insight=insight)
    meta = metadata(done.path)
    renamed = ("modelspec.title", "ss_output_name", "sshs_model_hash", "sshs_legacy_hash")
    assert {k: meta[k] for k in trainer if k not in renamed} == {k: v for k, v in trainer.items() if k not in renamed}
    # The release's name is its title and kohya's output name; the trainer's values are kept beside them.
    assert meta["modelspec.title"] == meta["ss_output_name"] == "inkstyle"
    assert meta["lora_spectrum.source_modelspec.title"] == trainer["modelspec.title"] == "inkstyle epoch 6"
    assert meta["lora_spectrum.source_ss_output_name"] == trainer["ss_output_name"] == "inkstyle"
    assert meta["lora_spectrum.source_file"] == paths[6].name and meta["lora_spectrum.source_epoch"] == "6"
    assert meta["lora_spectrum.source_sha256"] == file_sha256(paths[6]) and meta["lora_spectrum.note"] == "clean lines"
    assert datetime.fromisoformat(meta["lora_spectrum.promoted_at"]).utcoffset().total_seconds() == 0
    assert json.loads(meta["lora_spectrum.ranking"]) == {"rank": 1, "of": 1, "score": 0.9, "stderr": 0.3, "votes": 12}
    assert json.loads(meta["lora_spectrum.measures"]) == {"weight_norm": 2.5, "relative_change": 0.02}
    assert json.loads(meta["lora_spectrum.verdict"]) == insight["verdict"]  # as it stood: no probe, no pick
    assert Verdict.from_json(json.loads(meta["lora_spectrum.verdict"])).state == "needs probe"
    assert all(isinstance(v, str) for v in meta.values())


def test_the_verdict_as_it_stood_goes_into_the_metadata_and_the_card(run, tmp_path):
    catalog, paths, out = run
    probe = tmp_path / "probe"
    probe.mkdir()
    draws = {2: lambda kind, c: (c, False),  # no style yet
             4: lambda kind, c: (c, kind != "leak"),  # the style where asked, the colours kept
             6: lambda kind, c: ("red", True)}  # the style everywhere, every fill red
    write_probe(probe, {paths[e].name: (e, draw) for e, draw in draws.items()})
    insight = series_insight(catalog, probe=probe, clip_model=str(demo.assets.demo_clip_dir()),
                             references=demo.assets.demo_style_dir())
    v = insight["verdict"]
    assert v["state"] == "measures" and v["epoch"] == 4 and v["file"] == paths[4].name
    # The pick shipped: the metadata holds the verdict itself; the card quotes its reason as this epoch's.
    done = promote(catalog, 4, out, insight=insight)
    assert json.loads(metadata(done.path)["lora_spectrum.verdict"]) == v
    card = done.card.read_text(encoding="utf-8")
    assert "- Verdict when shipped (this epoch): " + text(v["reason"], 1000) in card and "uggest" not in card
    # Another epoch shipped: the same verdict recorded; the card says the verdict picked another epoch.
    done = promote(catalog, 6, out, name="late", insight=insight)
    assert json.loads(metadata(done.path)["lora_spectrum.verdict"]) == v
    card = done.card.read_text(encoding="utf-8")
    assert "- Shipped epoch 6 by choice; the verdict picks epoch 4: " + text(v["reason"], 1000) in card
    assert "(this epoch)" not in card


def test_missing_modelspec_keys_are_added_from_the_name_and_the_trigger_words(tmp_path, unet):
    loras = tmp_path / "loras"
    loras.mkdir()
    write_epoch(loras, unet, 6, drop=("modelspec.title", "modelspec.trigger_phrase"))
    catalog = Catalog(loras)
    catalog.scan()
    done = promote(catalog, 6, tmp_path / "shipped", name="Ink Style v1")
    meta = metadata(done.path)
    assert done.path.name == "Ink Style v1.safetensors" and done.card.name == "Ink Style v1.md"
    assert meta["modelspec.title"] == meta["ss_output_name"] == "Ink Style v1"
    assert "lora_spectrum.source_modelspec.title" not in meta, "no title to keep: the trainer wrote none"
    assert meta["lora_spectrum.source_ss_output_name"] == "inkstyle"
    assert meta["modelspec.trigger_phrase"] == "jimeng style, ink, stripes"  # the top tags, as the catalog reads
    assert "lora_spectrum.ranking" not in meta and "lora_spectrum.measures" not in meta
    assert "lora_spectrum.verdict" not in meta


def _after_header(data: bytes) -> bytes:
    return data[8 + struct.unpack("<Q", data[:8])[0]:]


def test_the_release_carries_the_hashes_a1111_civitai_and_kohya_compute(run, tmp_path):
    catalog, paths, out = run
    grid = write_grid(tmp_path / "grid", catalog)
    done = promote(catalog, 6, out, name="Ink v1", grid=grid)
    release, source = done.path.read_bytes(), paths[6].read_bytes()
    # The addnet hash, computed here from the bytes after the header: the same for the source and the release.
    addnet = hashlib.sha256(_after_header(release)).hexdigest()
    assert addnet == hashlib.sha256(_after_header(source)).hexdigest()
    # kohya's sshs_* keys, recomputed as sd-scripts does: the tensors saved again with only the ss_* keys.
    meta = metadata(done.path)
    with safe_open(str(done.path), framework="pt") as f:
        ss_only = save({k: f.get_tensor(k) for k in f.keys()}, {k: v for k, v in meta.items() if k.startswith("ss_")})
    assert meta["sshs_model_hash"] == hashlib.sha256(_after_header(ss_only)).hexdigest() == addnet
    assert meta["sshs_model_hash"] != KOHYA["sshs_model_hash"], "the trainer's stale hash is replaced"
    assert meta["sshs_legacy_hash"] == hashlib.sha256(ss_only[0x100000:0x110000]).hexdigest()[:8]
    # The card: the release's own sha256 with its AutoV2, and the addnet hash with A1111's short form.
    card = done.card.read_text(encoding="utf-8")
    whole = hashlib.sha256(release).hexdigest()
    assert f"`{whole}` (Civitai AutoV2: `{whole[:10]}`)" in card
    assert f"`{addnet}`; A1111 names it `{addnet[:12]}` in `Lora hashes`" in card
    # The grid's cells of that epoch name the same hash in their PNG parameters, as A1111 writes them.
    cells = json.loads((grid / "manifest.json").read_text())["cells"]
    cell = next(c for c in cells if c["file"] == paths[6].name)
    params = parse_parameters(Image.open(grid / cell["image"]).text["parameters"])
    assert params["Lora hashes"] == f"{paths[6].stem}: {addnet[:12]}"


def test_the_source_is_left_as_it_was(run):
    catalog, paths, out = run
    before = paths[6].read_bytes(), os.stat(paths[6]).st_mtime_ns
    promote(catalog, 6, out)
    assert (paths[6].read_bytes(), os.stat(paths[6]).st_mtime_ns) == before
    catalog.verify(catalog.get(paths[6].name))  # still the file the scan read


def test_an_existing_target_is_never_overwritten(run):
    catalog, paths, out = run
    out.mkdir()
    (out / "inkstyle.safetensors").write_bytes(b"someone else's release")
    with pytest.raises(ShipError, match="exists; never overwritten"):
        promote(catalog, 6, out)
    assert (out / "inkstyle.safetensors").read_bytes() == b"someone else's release"
    assert listing(out) == ["inkstyle.safetensors"]  # no card, no temporary file left


def test_an_existing_card_or_grid_image_is_refused_too(run, tmp_path):
    catalog, paths, out = run
    out.mkdir()
    (out / "inkstyle.md").write_text("my card", encoding="utf-8")
    with pytest.raises(ShipError, match="inkstyle.md: exists"):
        promote(catalog, 6, out)
    assert listing(out) == ["inkstyle.md"] and (out / "inkstyle.md").read_text(encoding="utf-8") == "my card"
    grid = write_grid(tmp_path / "grid", catalog)
    (out / "other.grid.png").write_bytes(b"png")
    with pytest.raises(ShipError, match="other.grid.png: exists"):
        promote(catalog, 6, out, name="other", grid=grid)
    assert listing(out) == ["inkstyle.md", "other.grid.png"]
    done = promote(catalog, 6, out, name="fresh")  # another name goes through
    assert done.path.is_file() and done.card.is_file() and done.grid_image is None


def test_a_file_changed_since_the_scan_is_refused_and_nothing_is_written(run, unet, tmp_path):
    catalog, paths, out = run
    write_epoch(paths[6].parent, unet, 7).replace(paths[6])  # another valid file under the same name
    with pytest.raises(ShipError, match="replaced after the last scan") as exc:
        promote(catalog, 6, out)
    assert "\n" not in str(exc.value)
    assert listing(out) == []
    paths[4].write_bytes(paths[4].read_bytes()[:500])  # cut off, as a copy in progress
    with pytest.raises(ShipError, match="inkstyle-000004.safetensors"):
        promote(catalog, 4, out)
    assert listing(out) == []


def test_a_file_rewritten_after_it_was_hashed_is_refused_mid_copy(run):
    # Same size, same mtime (restored): the catalog's checks cannot see it; the hash taken during the copy does.
    catalog, paths, out = run
    entry = catalog.get(paths[6].name)
    catalog.sha256(entry)
    st = os.stat(paths[6])
    raw = bytearray(paths[6].read_bytes())
    raw[-1] ^= 0xFF
    paths[6].write_bytes(bytes(raw))
    os.utime(paths[6], ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ShipError, match="changed while it was being copied"):
        promote(catalog, 6, out)
    assert listing(out) == []  # the partial copy and its temporary file are gone (the folder keeps its lock file)


def test_an_unknown_epoch_is_refused_listing_the_epochs_there_are(run):
    catalog, _, out = run
    with pytest.raises(ShipError, match=r"no epoch 5; it has epochs 2, 4, 6$"):
        promote(catalog, 5, out)
    with pytest.raises(ShipError, match="no series 'other'"):
        promote(catalog, 6, out, series="other")
    assert listing(out) == []


def test_a_step_numbered_series_is_promoted_by_step(tmp_path, unet):
    loras = tmp_path / "loras"
    loras.mkdir()
    for step in (250, 500):  # ai-toolkit: name_<step>, its epoch in training_info
        sd = make_lora_state_dict(unet, "sdxl", rank=4, magnitude=step / 500, seed=1, dtype=torch.float16)
        save_file(sd, str(loras / f"aitk_{step:09d}.safetensors"),
                  metadata={"training_info": json.dumps({"step": step, "epoch": 1}), "name": "aitk"})
    catalog = Catalog(loras)
    catalog.scan()
    done = promote(catalog, 500, tmp_path / "shipped")
    assert done.source == "aitk_000000500.safetensors"
    assert metadata(done.path)["lora_spectrum.source_step"] == "500"
    with pytest.raises(ShipError, match="2 files for epoch 1 .*give one of their steps instead"):
        promote(catalog, 1, tmp_path / "shipped", name="again")


@pytest.mark.parametrize("bad", ["../escape", "sub/name", "a\\b", ".hidden", "", " padded", "x.safetensors", "a:b"])
def test_a_name_with_path_parts_is_refused(run, bad):
    catalog, _, out = run
    with pytest.raises(ShipError, match="name"):
        promote(catalog, 6, out, name=bad)
    assert listing(out) == [] and listing(out.parent) == ["loras", *(["shipped"] * out.exists())]


def test_promoting_into_the_loras_folder_is_refused(run):
    catalog, paths, _ = run
    with pytest.raises(ShipError, match="inside the loras folder"):
        promote(catalog, 6, paths[6].parent, name="release")
    with pytest.raises(ShipError, match="inside the loras folder"):  # a release there would scan as an epoch
        promote(catalog, 6, paths[6].parent / "shipped", name="release")
    assert not (paths[6].parent / "shipped").exists()


def test_the_card_and_grid_image_go_beside_the_copy(run, tmp_path):
    catalog, paths, out = run
    grid = write_grid(tmp_path / "grid", catalog)
    ranking = {"votes": 20, "epochs": [{"file": paths[6].name, "epoch": 6, "rank": 1, "score": 0.9, "stderr": 0.3,
                                        "votes": 12}]}
    done = promote(catalog, 6, out, note="crisp <b>lines</b>", ranking=ranking, grid=grid,
                   base_id="stabilityai/stable-diffusion-xl-base-1.0")
    assert isinstance(done, Promotion) and done.grid_image == out / "inkstyle.grid.png"
    assert done.grid_image.read_bytes() == (grid / "grid.png").read_bytes()
    assert listing(out) == ["inkstyle.grid.png", "inkstyle.md", "inkstyle.safetensors"]
    card = done.card.read_text(encoding="utf-8")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert front["instance_prompt"] == "jimeng style" and front["tags"][:2] == ["lora", "text-to-image"]
    assert "Use **jimeng style** in the prompt." in card
    assert "epoch 6 (inkstyle-000006.safetensors)" in card and "Note: crisp &lt;b&gt;lines&lt;/b&gt;" in card
    assert "#1 of 1 (score 0.9 ± 0.3, 12 vote(s) on this epoch of 20 cast" in card
    assert "![The grid of epochs compared](inkstyle.grid.png)" in card
    for row in ("| prompt | an ink fox, inkstyle style |", "| negative prompt | blurry |", "| seeds | 1, 2 |",
                "| strengths | 0.8, 1 |", "| steps | 20 |", "| cfg (guidance) | 5.5 |", "| size | 64x64 |"):
        assert row in card, row
    assert ("python -m lora_spectrum grid --base stabilityai/stable-diffusion-xl-base-1.0 --family sdxl --loras "
            "loras --series inkstyle --epochs 2,4,6 --include-base --seeds 1,2 --strengths 0.8,1") in card
    assert "| optimizer | bitsandbytes.optim.adamw.AdamW8bit | ss\\_optimizer |" in card
    assert done.sha256 in card


def test_markdown_and_html_in_a_files_metadata_reach_the_card_as_plain_text(tmp_path, unet):
    loras = tmp_path / "loras"
    loras.mkdir()
    evil = "<img src=x onerror=alert(1)> [link](http://evil) **x**"
    write_epoch(loras, unet, 6, ss_optimizer=evil, **{"modelspec.trigger_phrase": evil})
    catalog = Catalog(loras)
    catalog.scan()
    card = promote(catalog, 6, tmp_path / "shipped").card.read_text(encoding="utf-8")
    body = card.split("---\n", 2)[2]
    assert "<img" not in body and "&lt;img src=x onerror=alert(1)&gt; \\[link\\](http://evil) \\*\\*x\\*\\*" in body


def test_a_target_created_during_the_copy_is_not_overwritten(run):
    # The last step links the finished copy into place, which fails rather than replace a file that appeared
    # after the checks (another promotion racing this one).
    catalog, paths, out = run
    entry = catalog.get(paths[6].name)
    header = read_header(entry.path, entry.size)
    out.mkdir()
    target = out / "raced.safetensors"
    target.write_bytes(b"the other promotion's file")
    with pytest.raises(ShipError, match="exists; never overwritten"):
        copy_with_metadata(entry, header.table, header.data_start, dict(header.metadata), catalog.sha256(entry),
                           target)
    assert target.read_bytes() == b"the other promotion's file" and listing(out) == ["raced.safetensors"]


def test_a_folder_locked_too_long_by_another_promotion_is_one_plain_error(run, monkeypatch):
    catalog, _, out = run
    monkeypatch.setattr(promotion, "LOCK_TIMEOUT_S", 0.2)
    out.mkdir()
    with FileLock(release_lock(out)):  # another process copying a large file into this folder
        with pytest.raises(ShipError, match="another promotion into this folder has run for 0.2 s") as exc:
            promote(catalog, 6, out)
    assert "\n" not in str(exc.value) and listing(out) == []
    assert promote(catalog, 6, out).path.is_file()  # free again


def test_a_folder_that_cannot_be_written_is_a_ship_error(run):
    catalog, paths, out = run
    out.write_bytes(b"a file where the folder should be")
    with pytest.raises(ShipError, match="cannot write the release"):
        promote(catalog, 6, out)
    assert out.read_bytes() == b"a file where the folder should be"


ROOT = Path(__file__).resolve().parents[2]
SHIPPER = """
import sys
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.decision.promotion import promote
from lora_spectrum.errors import ShipError
catalog = Catalog(sys.argv[1])
catalog.scan()
print("ready", flush=True)
sys.stdin.readline()  # all start together
try:
    print("shipped", promote(catalog, 6, sys.argv[2], note=sys.argv[3]).path)
except ShipError as exc:
    print("refused", exc)
"""




def test_two_processes_shipping_one_name_at_once_make_one_whole_release_and_one_refusal(run):
    # Two app processes (or the CLI beside the app) promote the same epoch under the same name into one folder.
    catalog, paths, out = run
    out.mkdir()
    lock = FileLock(release_lock(out))

    def hold():  # the folder's lock held by another process: neither writes a byte until it is free
        time.sleep(1.0)
        assert listing(out) == [], "a promotion wrote while another held the folder's lock"
        lock.release()

    lock.acquire()
    try:
        done = together(SHIPPER, [[str(catalog.folder), str(out), f"process {k}"] for k in range(2)], hold=hold)
    finally:
        if lock.is_locked:
            lock.release()
    assert [d.returncode for d in done] == [0, 0], [d.stderr[-2000:] for d in done]
    outcomes = sorted(d.stdout.strip() for d in done)
    assert [o.split(" ", 1)[0] for o in outcomes] == ["refused", "shipped"], outcomes
    refusal = outcomes[0].split(" ", 1)[1]
    assert refusal == f"{out / 'inkstyle.safetensors'}: exists; never overwritten (choose another --name or folder)"
    assert listing(out) == ["inkstyle.md", "inkstyle.safetensors"]  # no temporary file, no second card
    assert sorted(p.name for p in out.iterdir()) == ["inkstyle.md", "inkstyle.safetensors"], "no lock file to publish"
    release = out / "inkstyle.safetensors"
    assert tensor_bytes(release) == tensor_bytes(paths[6]) and data_section(release) == data_section(paths[6])
    winner = metadata(release)["lora_spectrum.note"]
    assert winner in ("process 0", "process 1") and metadata(release)["lora_spectrum.source_sha256"] == \
        file_sha256(paths[6])
    assert f"Note: {winner}" in (out / "inkstyle.md").read_text(encoding="utf-8"), "the card is the same process's"


def _hub_card(path):
    """The card as the hub parses it (``huggingface_hub.ModelCard``): its validated front matter and its text."""
    from huggingface_hub import ModelCard

    card = ModelCard(path.read_text(encoding="utf-8"), ignore_metadata_errors=False)
    return card.data.to_dict(), card.text


def test_the_hub_layout_makes_the_folder_a_hub_repository(run, tmp_path):
    catalog, paths, out = run
    grid = write_grid(tmp_path / "grid", catalog)
    done = promote(catalog, 6, out, name="Ink v1", grid=grid, layout="hub", license="openrail++",
                   base_id="stabilityai/stable-diffusion-xl-base-1.0")
    # 1. README.md is the card; the grid image stays beside it as evidence; this epoch's renders go to images/.
    assert done.card == out / "README.md"
    cells = [c for c in json.loads((grid / "manifest.json").read_text())["cells"] if c["file"] == paths[6].name
             and c["strength"] == 1.0]
    assert listing(out) == ["Ink v1.grid.png", "Ink v1.safetensors", "README.md", "images"]
    assert sorted(p.name for p in done.images) == sorted(Path(c["image"]).name for c in cells) and len(cells) == 2
    for c in cells:
        assert (out / "images" / Path(c["image"]).name).read_bytes() == (grid / c["image"]).read_bytes()
    # 2. The front matter as the hub validates it: license, base_model, tags, instance_prompt, a widget of this
    #    epoch's own renders with their prompts (never the comparison grid).
    front, body = _hub_card(done.card)
    assert front["license"] == "openrail++" and front["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert front["instance_prompt"] == "jimeng style" and "lora" in front["tags"]
    assert [w["output"]["url"] for w in front["widget"]] == [f"images/{Path(c['image']).name}" for c in cells]
    assert {w["text"] for w in front["widget"]} == {"an ink fox, inkstyle style"}
    assert all((out / w["output"]["url"]).is_file() for w in front["widget"])
    assert "![The grid of epochs compared](Ink%20v1.grid.png)" in body and "License: openrail++." in body
    # 3. No local path anywhere in the card or the metadata.
    header = json.dumps(metadata(done.path))
    for text_ in (done.card.read_text(encoding="utf-8"), header):
        assert str(tmp_path) not in text_ and str(Path.home()) not in text_
    # 4. The reproduce command runs as written from the release folder: it parses, and the folder's own catalog
    #    has the epoch it names (the release file).
    from lora_spectrum.cli import build_parser

    command = body.split("```bash\n")[1].split("\n```")[0]
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert args.loras == "." and args.base == "stabilityai/stable-diffusion-xl-base-1.0" and args.epochs == "6"
    here = Catalog(out)
    assert [(e.name, e.epoch) for e in here.scan()] == [("Ink v1.safetensors", 6)]
    # 5. A second release into the same folder is refused (one README.md per repository), nothing half written.
    with pytest.raises(ShipError, match="README.md: exists"):
        promote(catalog, 4, out, name="other", grid=grid, layout="hub")
    assert listing(out) == ["Ink v1.grid.png", "Ink v1.safetensors", "README.md", "images"]


def test_the_hub_card_says_when_no_license_was_given_and_why_a_local_base_is_not_named(run, tmp_path, unet):
    catalog, _paths, out = run
    local = tmp_path / "my-sdxl"
    local.mkdir()
    done = promote(catalog, 6, out, layout="hub", base_id=str(local))
    front, body = _hub_card(done.card)
    assert "license" not in front and "base_model" not in front
    assert "No license was given" in body and "no repository id to name" in body
    assert str(tmp_path) not in done.card.read_text(encoding="utf-8")
    # The file's modelspec.license is the license when none is given.
    loras = tmp_path / "loras2"
    loras.mkdir()
    write_epoch(loras, unet, 6, **{"modelspec.license": "apache-2.0"})
    other = Catalog(loras)
    other.scan()
    front, body = _hub_card(promote(other, 6, tmp_path / "shipped2", layout="hub").card)
    assert front["license"] == "apache-2.0" and "License: apache-2.0." in body


def test_the_flat_layout_keeps_the_card_beside_the_file_and_an_unknown_layout_is_refused(run):
    catalog, _paths, out = run
    assert promote(catalog, 6, out, layout="flat").card == out / "inkstyle.md"
    with pytest.raises(ShipError, match="not a layout"):
        promote(catalog, 4, out, name="x", layout="tree")


def test_a_sweep_gives_the_release_a_recommended_strength_and_its_examples_at_that_strength(tmp_path, unet):
    from lora_spectrum.decision.strengths import strength_advice

    # The source as a trainer wrote it on its own machine: local paths in the metadata, whole and inside JSON.
    loras = tmp_path / "loras"
    loras.mkdir()
    secret = "/home/alice/private-datasets"
    datasets = [{"subsets": [{"image_dir": f"{secret}/10_inkstyle", "num_repeats": 10}]}]
    paths = {e: write_epoch(loras, unet, e, ss_datasets=json.dumps(datasets),
                            ss_vae_name=f"{secret}/../vae/sdxl_vae.safetensors",
                            ss_training_comment=f"captions in {secret}/captions") for e in (4, 6)}
    catalog = Catalog(loras)
    catalog.scan()
    grid = write_grid(tmp_path / "grid", catalog)  # strengths 0.8 and 1.0 with a base column
    insight = series_insight(catalog, grid=grid, clip_model=str(demo.assets.demo_clip_dir()))
    advice = strength_advice(insight["image"], paths[6].name, "balanced")
    assert advice is not None and advice["recommended"] in (0.8, 1.0) and advice["measure"] == "clip"
    done = promote(catalog, 6, tmp_path / "out", name="Ink v1", grid=grid, layout="hub", insight=insight,
                   base_id="stabilityai/stable-diffusion-xl-base-1.0")
    # 1. The recommendation in the metadata and the card (with the A1111 syntax), its examples at that strength.
    meta = metadata(done.path)
    assert float(meta["lora_spectrum.recommended_strength"]) == advice["recommended"]
    body = done.card.read_text(encoding="utf-8")
    assert "## Recommended strength" in body and f"<lora:Ink v1:{advice['recommended']:g}>" in body
    cells = json.loads((grid / "manifest.json").read_text())["cells"]
    wanted = sorted(Path(c["image"]).name for c in cells if c["file"] == paths[6].name
                    and c["strength"] == advice["recommended"])
    assert sorted(p.name for p in done.images) == wanted and len(wanted) == 2
    # 2. No local path of the trainer's in the release: header and card alike; the count is recorded.
    for shown in (json.dumps(meta), body):
        assert secret not in shown and "/home/alice" not in shown and str(tmp_path) not in shown
    assert json.loads(meta["ss_datasets"])[0]["subsets"][0]["image_dir"] == "10_inkstyle"
    assert meta["ss_vae_name"] == "sdxl_vae.safetensors" and meta["lora_spectrum.local_paths_removed"] == "3"
    assert tensor_bytes(done.path) == tensor_bytes(paths[6])  # the tensors stay bit for bit
