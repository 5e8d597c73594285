"""The model card's front matter: the YAML the Hugging Face hub reads for a LoRA (``base_model``, ``tags``,
``instance_prompt``, ``license``, ``widget``). Pure text from plain values; ``model_card.py`` places it."""

from __future__ import annotations

import re

import yaml

from lora_spectrum.bases.families import REGISTRY
from lora_spectrum.errors import shorten
from lora_spectrum.language import _

# What kohya / musubi write in ss_base_model_version, as a hub id for ``base_model``; each family's hub tag.
KNOWN_BASES = {version: hub_id for family in REGISTRY for version, hub_id in family.known_bases.items()}
FAMILY_TAGS = {family.name: family.hub_tag for family in REGISTRY if family.hub_tag}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


def hub_base(base_id: str | None, metadata: dict[str, str]) -> str | None:
    """The ``base_model`` of the front matter: a hub id named by the caller, else one the metadata implies."""
    if base_id and HUB_ID.match(base_id):
        return base_id
    version = (metadata.get("ss_base_model_version") or "").strip().lower()
    return KNOWN_BASES.get(version)


def front_matter(triggers, base, family, metadata, grid, grid_image, license: str | None = None,
                 widget: list[dict] | None = None) -> str:
    """The YAML block between ``---`` lines that the hub reads (``base_model``, ``tags``, ``instance_prompt``,
    ``license``, ``widget``), written by a YAML dumper. ``license``: the one given (``card_license``);
    ``widget``: example images (``{"text", "output": {"url"}}``, paths relative to the card), else the grid image."""
    # 1. What the hub reads for a LoRA: base_model, tags, instance_prompt; license only when one is known.
    module = (metadata.get("ss_network_module") or "").lower()
    tags = ["lora", "text-to-image", "diffusers", "template:sd-lora"]
    tags += [t for t in (FAMILY_TAGS.get(family or ""), "lycoris" if "lycoris" in module else None) if t]
    front: dict = {"base_model": base} if base else {}
    front["tags"] = tags
    if triggers:
        front["instance_prompt"] = ", ".join(str(t) for t in triggers)
    lic = card_license(license, metadata)
    if lic:
        front["license"] = lic if LICENSE_ID.match(lic) else "other"
        if not LICENSE_ID.match(lic):
            front["license_name"] = shorten(lic, 100)
    # 2. The example images: this epoch's own renders when given, else the grid image.
    settings = (grid or {}).get("settings") or {}
    if widget:
        front["widget"] = [{"text": str(w["text"]), "output": {"url": str(w["output"]["url"])}} for w in widget]
    elif grid_image:
        front["widget"] = [{"text": str(settings.get("prompt", "")), "output": {"url": grid_image}}]
    dumped = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{dumped}---"


def card_license(given: str | None, metadata: dict[str, str]) -> str:
    """The release's license: the one given (``--license``), else the file's ``modelspec.license`` (or
    ``license``); empty when none."""
    return ((given or "").strip() or (metadata.get("modelspec.license") or metadata.get("license") or "").strip())


def split_front_matter(card: str) -> tuple[str, str]:
    """(the front matter's YAML text, the Markdown body after it) of a card; ("", card) when it has none."""
    if card.startswith("---\n"):
        end = card.find("\n---\n", 3)
        if end != -1:
            return card[4:end + 1], card[end + 5:].lstrip("\n")
    return "", card


def license_line(lic: str) -> str:
    """The card's sentence on the license: the one given, or plainly that none was."""
    if lic:
        return _("License: {license}.").format(license=lic)
    return _("No license was given (no --license, no modelspec.license in the file): the hub shows none, and "
             "without one nobody may reuse this LoRA. Add one before publishing.")


def local_base_line() -> str:
    """Why the front matter names no ``base_model`` when the base was a local folder or the demo."""
    return _("No base_model in the front matter: the base was loaded from a local folder (or the demo), not from a "
             "hub repository, so there is no repository id to name.")


def local_base_command_line(base: str) -> str:
    """Under the hub layout's reproduce command, when the base was local: what to give ``--base``."""
    return _("The base was a local folder named {base}: give --base the path of your copy of it (or its hub "
             "repository id).").format(base=base)
