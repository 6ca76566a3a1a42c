"""LyCORIS' ``lycoris.kohya`` network options as ``model.*``: the algorithm (LoRA/LoCon, LoHa, LoKr),
LoKr's factor, DoRA (``dora_wd``), LyCORIS' dropout and its target preset.

Read as ``lycoris/kohya.py``'s ``create_network`` reads them (LyCORIS commit f49d30d, 2025).
"""

from __future__ import annotations

from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.record import Conversion

FALSE = ("false", "0", "0.0", "none", "")
# LyCORIS' algo -> bespoke_pl's model.network; lora and locon are both LyCORIS' LoConModule: LoRA, with the
# convolutions by conv_dim.
ALGOS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}
NAMES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr"}
VARIANT = "a LyCORIS variant of the update that bespoke_pl does not train"
VARIANT_ARGS = (
    "use_tucker", "use_cp", "use_conv_cp", "use_scalar", "train_norm", "constraint", "rescaled",
    "full_matrix", "bypass_mode", "rs_lora", "unbalanced_factorization", "train_t5xxl", "decompose_both",
    "block_size",
)  # fmt: skip
TARGETS = (
    "LyCORIS' default preset also adapts conv_in, conv_out and the time embedding; bespoke_pl adapts kohya's "
    "targets (transformer blocks, and with conv_rank the ResNet blocks and samplers)"
)


def lycoris_network(extra: dict[str, str], conv: Conversion, module_source: str) -> str:
    """``model.network`` from ``algo`` (LyCORIS' default: lora); the network, for the options after it."""
    algo = extra.pop("algo", "lora").lower()
    if algo not in ALGOS:
        raise ConfigError(
            f"kohya network_args algo={algo}: LyCORIS {algo} is not one bespoke_pl trains; it trains "
            "algo=lora and locon (LoRA, with convolutions), loha and lokr"
        )
    network = ALGOS[algo]
    conv.note("model", f"{module_source}, network_args algo={algo}: {NAMES[network]}. {TARGETS}")
    if network != "lora":
        conv.set("model.network", network, f"kohya network_args algo={algo}")
    return network


def lycoris_options(extra: dict[str, str], conv: Conversion, network: str) -> None:
    """LyCORIS' dropout, LoKr's factor, DoRA and the target preset (each popped from ``extra``)."""
    _dropout(extra, conv, network)
    _factor(extra, conv, network)
    _dora(extra, conv, network)
    preset = extra.pop("preset", None)
    if preset == "full":
        conv.note("model", "kohya network_args preset=full: LyCORIS' default; see network_module above")
    elif preset is not None:
        conv.skip(f"network_args preset={preset}", f"bespoke_pl has one set of targets; {TARGETS}")


def arg_number(key: str, value: str, kind: type = float):
    """A number in network_args (text, as kohya passes them)."""
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        raise ConfigError(f"kohya network_args {key}={value} is not a number") from None


def _dropout(extra: dict[str, str], conv: Conversion, network: str) -> None:
    """LyCORIS' ``dropout`` (on the LoRA input, as peft's lora_dropout); its LoHa and LoKr ignore it."""
    if "dropout" not in extra:
        return
    text = extra.pop("dropout")
    value = arg_number("dropout", text)
    if not value:
        conv.note("model", f"kohya network_args dropout={text}: no dropout, as bespoke_pl's default")
    elif network != "lora":
        conv.note(
            "model",
            f"kohya network_args dropout={text}: unused; LyCORIS' {NAMES[network]} applies no dropout (it "
            "warns so), nor does bespoke_pl's",
        )
    else:
        conv.set("model.lora_dropout", value, f"kohya network_args dropout={text}")


def _factor(extra: dict[str, str], conv: Conversion, network: str) -> None:
    """LoKr's ``factor``: the small Kronecker factor's size, -1 near the square root (both programs)."""
    if "factor" not in extra:
        return
    text = extra.pop("factor")
    if network != "lokr":
        conv.note("model", f"kohya network_args factor={text}: unused with {NAMES[network]} (LoKr's option)")
        return
    factor = arg_number("factor", text, int)
    if factor != -1 and factor < 1:
        raise ConfigError(f"kohya network_args factor={text}: LoKr's factor is -1 or a whole number >= 1")
    conv.set("model.lokr_factor", factor, f"kohya network_args factor={text}")


def _dora(extra: dict[str, str], conv: Conversion, network: str) -> None:
    """``dora_wd``: DoRA, saved in kohya/LyCORIS format; ``wd_on_output``: where its magnitudes are."""
    dora = False
    if "dora_wd" in extra:
        text = extra.pop("dora_wd")
        if text.lower() in FALSE:
            conv.note("model", f"kohya network_args dora_wd={text}: no DoRA, as bespoke_pl's default")
        elif network != "lora":
            conv.skip(
                f"network_args dora_wd={text}", "bespoke_pl's DoRA is on plain LoRA only (algo=lora, locon)"
            )
        else:
            dora = True
            conv.set("model.use_dora", True, f"kohya network_args dora_wd={text}")
    if "wd_on_output" in extra:
        text = extra.pop("wd_on_output")
        if not dora:
            conv.note(
                "model", f"kohya network_args wd_on_output={text}: unused without DoRA (in LyCORIS too)"
            )
        elif text.lower() in FALSE:
            conv.skip(
                f"network_args wd_on_output={text}",
                "bespoke_pl's DoRA keeps one magnitude per output row (LyCORIS' default, wd_on_output=True)",
            )
        else:
            conv.note(
                "model", f"kohya network_args wd_on_output={text}: one magnitude per output row, as here"
            )
