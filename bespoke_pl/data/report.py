"""The report of a training folder's check: findings grouped by problem, and a summary of the set.

Filled by :func:`bespoke_pl.data.checks.scan_folder`; ``format`` is the text of a ``DatasetError`` and of
``python -m bespoke_pl check-data``, ``summary`` the set's statistics for the latter.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MISSING_FOLDER = "does not exist or is not a folder"

CLIP_MAX_LENGTH = 77  # tokens, including the start and end tokens


@dataclass
class Finding:
    """One problem: ``level`` error or warning, a short ``problem`` shared by like files, the ``item``."""

    level: str
    problem: str
    item: str


@dataclass
class DataReport:
    """Every finding of one folder, plus per-image facts for the summary."""

    folder: Path
    images: int = 0
    findings: list[Finding] = field(default_factory=list)
    colours: list[int] = field(default_factory=list)
    caption_tokens: list[int] = field(default_factory=list)
    tags: Counter = field(default_factory=Counter)
    refused_sizes: Counter = field(default_factory=Counter)  # (width, height) of images of the wrong size
    token_counter: str = "a CLIP-like estimate"

    def add(self, level: str, problem: str, item: str) -> None:
        self.findings.append(Finding(level, problem, item))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def format(self, max_items: int | None = 30) -> str:
        """The findings grouped by problem, errors first; ``max_items`` files per problem (None: all)."""
        missing = [f for f in self.findings if f.problem == MISSING_FOLDER]
        if missing and len(self.findings) == 1:  # nothing else can be said about a folder that is not there
            return f"training folder {self.folder} {MISSING_FOLDER}"
        head = f"{self.images} images in {self.folder}" if self.images else f"training folder {self.folder}"
        lines = [f"{head}; these cannot be used:" if self.errors else f"{head}: no errors"]
        cut = False
        for level in ("error", "warning"):
            groups: dict[str, list[str]] = {}
            for finding in self.findings:
                if finding.level == level:
                    groups.setdefault(finding.problem, []).append(finding.item)
            if groups and level == "warning":
                lines.append("warnings:")
            for problem, items in groups.items():
                shown = items if max_items is None else items[:max_items]
                more = f", and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
                cut |= bool(more)
                listed = ", ".join(item for item in shown if item)
                lines.append(f"  {problem}: {listed}{more}" if listed else f"  {problem}")
        if cut:
            lines.append(f"the full list: python -m bespoke_pl check-data {self.folder}")
        return "\n".join(lines)

    def summary(self, top_tags: int = 15) -> str:
        """Count, colours per image, caption length in tokens and tag frequency of the usable pairs."""

        def spread(values: list[int]) -> str:
            if not values:
                return "-"
            return f"min {min(values)}, median {statistics.median(values):g}, max {max(values)}"

        lines = [
            f"usable pairs: {len(self.colours)} of {self.images} images",
            f"colours per image: {spread(self.colours)}",
            f"caption length in tokens ({self.token_counter}, limit {CLIP_MAX_LENGTH - 2}): "
            f"{spread(self.caption_tokens)}",
        ]
        common = ", ".join(f"{tag} {n}" for tag, n in self.tags.most_common(top_tags))
        lines.append(f"tags ({len(self.tags)} distinct, most common first): {common or '-'}")
        return "\n".join(lines)
