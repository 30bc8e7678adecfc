"""The dots1 architecture as one typed config, and its mapping onto megatron-core.

A preset (``dotsllm/model/presets/<name>.yaml``, shipped in the package) fills :class:`Dots1ModelConfig`.
:meth:`Dots1ModelConfig.transformer_config` turns it and a parallel layout (its sizes: tp, pp, ep,
etp, cp, vpp) into megatron-core's ``TransformerConfig``; :meth:`Dots1ModelConfig.gpt_model_kwargs` gives the
``GPTModel`` arguments that live outside it (vocabulary, RoPE, untied embeddings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from dotsllm.config_loading import from_dict

PRESET_DIR = Path(__file__).resolve().parent / "presets"


# Fields that set how the model trains, not what it is: a run may change them (model_overrides).
TRAINING_FIELDS = ("moe_aux_loss_coeff", "moe_router_bias_update_rate", "init_method_std")


@dataclass(frozen=True)
class Dots1ModelConfig:
    """Everything that defines a dots1 model; defaults are the released dots.llm1 values."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    ffn_hidden_size: int  # FFN width of the first `num_dense_layers` (dense) layers
    num_experts: int
    moe_ffn_hidden_size: int
    moe_router_topk: int
    vocab_size: int
    num_dense_layers: int = 1
    num_shared_experts: int = 2  # stored as one MLP of num_shared_experts * moe_ffn_hidden_size
    moe_router_topk_scaling_factor: float = 2.5
    # Sequence-wise balance loss; dots.llm1 does not publish its coefficient, DeepSeek-V3 used 1e-4.
    moe_aux_loss_coeff: float = 1e-4
    # Aux-loss-free balancing: step size of the expert-bias update (DeepSeek-V3's gamma).
    moe_router_bias_update_rate: float = 1e-3
    max_position_embeddings: int = 32768
    rotary_base: float = 1e7
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.006
    qk_layernorm: bool = True
    untie_embeddings: bool = True

    def __post_init__(self) -> None:
        checks = {
            "num_dense_layers must be in [0, num_layers)": 0 <= self.num_dense_layers < self.num_layers,
            "num_attention_heads must be a multiple of num_query_groups": self.num_attention_heads
            % self.num_query_groups
            == 0,
            "moe_router_topk must be in [1, num_experts]": 1 <= self.moe_router_topk <= self.num_experts,
            "num_shared_experts must be >= 0": self.num_shared_experts >= 0,
        }
        failed = [msg for msg, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"model config {self.name!r}: " + "; ".join(failed))

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<dict>") -> "Dots1ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model config field(s) {unknown}; known: {sorted(known)}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.name not in values
        )
        if missing:
            raise ValueError(f"{source}: missing model config field(s) {missing}")
        # Values typed by the field: YAML reads `1e-3` (no dot) as a string, e.g. in a
        # `model_overrides.moe_aux_loss_coeff=1e-3` override.
        return from_dict(cls, values, where=source)

    @classmethod
    def from_preset(cls, name_or_path: str | Path, **overrides: Any) -> "Dots1ModelConfig":
        """Load the preset ``<name>`` (or a YAML path) and apply field overrides."""
        path = Path(name_or_path)
        if not path.suffix:
            path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"no model preset {name_or_path!r}; presets: {list_presets()}")
        values = yaml.safe_load(path.read_text())
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a model preset must be a YAML mapping")
        return cls.from_dict(values, source=str(path)).with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> "Dots1ModelConfig":
        """This config with field ``overrides`` (a run's ``model_overrides``), typed as from YAML."""
        if not overrides:
            return self
        return self.from_dict({**dataclasses.asdict(self), **overrides}, source="model_overrides")

    def architecture_differences(self, other: "Dots1ModelConfig") -> list[str]:
        """``field: mine vs other's`` for each field of the architecture where the two differ (the
        name, and the settings of training only in :data:`TRAINING_FIELDS`, aside)."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name not in ("name", *TRAINING_FIELDS) and getattr(self, f.name) != getattr(other, f.name)
        ]

    # ---- derived quantities -------------------------------------------------------------------

    @property
    def shared_expert_ffn_hidden_size(self) -> int:
        return self.num_shared_experts * self.moe_ffn_hidden_size

    @property
    def moe_layer_freq(self) -> list[int]:
        """megatron-core's per-layer pattern: 0 = dense FFN, 1 = MoE."""
        return [0] * self.num_dense_layers + [1] * (self.num_layers - self.num_dense_layers)

    # ---- megatron-core mapping ----------------------------------------------------------------

    def transformer_config(
        self,
        *,
        tp: int = 1,
        pp: int = 1,
        ep: int = 1,
        etp: int = 1,
        cp: int = 1,
        vpp: int | None = None,
        params_dtype: torch.dtype = torch.float32,
        **overrides: Any,
    ):
        """megatron-core ``TransformerConfig`` for this model under the layout ``tp`` … ``vpp`` (the
        fields of a run's ``parallel`` section).

        ``overrides`` are passed through to ``TransformerConfig`` (e.g. recompute settings).
        """
        from megatron.core.transformer.transformer_config import TransformerConfig

        on_gpu = torch.cuda.is_available()
        kwargs: dict[str, Any] = dict(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            kv_channels=self.head_dim,
            ffn_hidden_size=self.ffn_hidden_size,
            normalization="RMSNorm",
            layernorm_epsilon=self.norm_epsilon,
            qk_layernorm=self.qk_layernorm,
            gated_linear_unit=True,
            activation_func=torch.nn.functional.silu,
            add_bias_linear=False,
            add_qkv_bias=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            init_method_std=self.init_method_std,
            # MoE
            num_moe_experts=self.num_experts,
            moe_layer_freq=self.moe_layer_freq,
            moe_ffn_hidden_size=self.moe_ffn_hidden_size,
            moe_shared_expert_intermediate_size=self.shared_expert_ffn_hidden_size or None,
            moe_router_topk=self.moe_router_topk,
            moe_router_score_function="sigmoid",
            moe_router_enable_expert_bias=True,
            moe_router_bias_update_rate=self.moe_router_bias_update_rate,
            moe_router_topk_scaling_factor=self.moe_router_topk_scaling_factor,
            moe_router_load_balancing_type="seq_aux_loss",
            moe_aux_loss_coeff=self.moe_aux_loss_coeff,
            moe_router_dtype="fp32",
            moe_token_dispatcher_type="alltoall",
            moe_grouped_gemm=on_gpu,
            moe_permute_fusion=False,
            # losses are (sum, token count) and gradients a global per-token mean (training/step.py)
            calculate_per_token_loss=True,
            # precision
            params_dtype=params_dtype,
            bf16=params_dtype == torch.bfloat16,
            fp16=params_dtype == torch.float16,
            # parallelism
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp,  # the schedules find the loss stage by it
            # Interleaved 1F1B as Megatron-LM runs it: overlapped isend/irecv. Batched p2p would pair a
            # stage's two sends to one peer (PP = 2: next = prev) with that peer's receives in the
            # wrong order, swapping activations and gradients of equal shape.
            overlap_p2p_comm=vpp is not None,
            batch_p2p_comm=vpp is None,
            expert_model_parallel_size=ep,
            expert_tensor_parallel_size=etp,
            context_parallel_size=cp,
            sequence_parallel=tp > 1,  # megatron-core requires it for MoE with TP > 1
            pipeline_dtype=params_dtype,
            use_cpu_initialization=not on_gpu,
            perform_initialization=True,
        )
        kwargs.update(overrides)
        return TransformerConfig(**kwargs)

    def gpt_model_kwargs(self) -> dict[str, Any]:
        """``GPTModel`` arguments that are not part of ``TransformerConfig``."""
        return dict(
            vocab_size=self.vocab_size,
            max_sequence_length=self.max_position_embeddings,
            position_embedding_type="rope",
            rotary_base=int(self.rotary_base),
            rotary_percent=1.0,
            share_embeddings_and_output_weights=not self.untie_embeddings,
        )

    # ---- HuggingFace mapping ------------------------------------------------------------------

    def hf_config_dict(self) -> dict[str, Any]:
        """The ``config.json`` fields of transformers' ``Dots1Config`` for this architecture."""
        return dict(
            model_type="dots1",
            architectures=["Dots1ForCausalLM"],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.ffn_hidden_size,
            moe_intermediate_size=self.moe_ffn_hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_query_groups,
            head_dim=self.head_dim,
            n_shared_experts=self.num_shared_experts,
            n_routed_experts=self.num_experts,
            num_experts_per_tok=self.moe_router_topk,
            first_k_dense_replace=self.num_dense_layers,
            norm_topk_prob=True,
            routed_scaling_factor=self.moe_router_topk_scaling_factor,
            scoring_func="noaux_tc",
            n_group=1,
            topk_group=1,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.norm_epsilon,
            rope_theta=self.rotary_base,
            rope_scaling=None,
            sliding_window=None,  # full attention in every layer; Dots1Config's default 4096 is not dots1's
            tie_word_embeddings=not self.untie_embeddings,
            attention_bias=False,
            hidden_act="silu",
            initializer_range=self.init_method_std,
        )

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], name: str = "dots1-hf") -> "Dots1ModelConfig":
        """The architecture of a HF dots1 ``config.json`` (as a dict).

        Keys it lacks take transformers' ``Dots1Config`` defaults, as ``from_pretrained`` would;
        features this megatron-core mapping cannot express raise ``ValueError`` naming them.
        """
        values = {**_HF_DOTS1_DEFAULTS, **hf}
        if values.get("model_type") != "dots1":
            raise ValueError(f"{name}: model_type is {values.get('model_type')!r}, not 'dots1'")
        missing = [k for k in ("n_routed_experts", "n_shared_experts", "num_experts_per_tok") if values.get(k) is None]
        if missing:
            raise ValueError(f"{name}: config.json lacks {missing}")
        rope = values.get("rope_parameters") or {
            **(values.get("rope_scaling") or {}), "rope_theta": values["rope_theta"]
        }
        theta = rope.get("rope_theta")
        layers = values["num_hidden_layers"]
        layer_types = values.get("layer_types") or [
            "sliding_attention" if values["sliding_window"] is not None and i >= values["max_window_layers"]
            else "full_attention"
            for i in range(layers)
        ]
        unsupported = {
            "rope scaling": rope.get("rope_type", rope.get("type", "default")) != "default",
            "a non-integer rope_theta (GPTModel takes an int)": theta is None or theta != int(theta),
            "sliding-window layers": any(t != "full_attention" for t in layer_types),
            "norm_topk_prob false (megatron-core normalizes sigmoid top-k scores)": not values["norm_topk_prob"],
            "num_experts_per_tok 1 (megatron-core leaves a single sigmoid score unnormalized)":
                values["num_experts_per_tok"] == 1,
            "n_group/topk_group other than 1": (values["n_group"], values["topk_group"]) != (1, 1),
            "a scoring_func other than sigmoid": values.get("scoring_func", "noaux_tc") not in ("noaux_tc", "sigmoid"),
            "a hidden_act other than silu": values["hidden_act"] != "silu",
            "attention_bias": bool(values["attention_bias"]),
        }
        found = [what for what, bad in unsupported.items() if bad]
        if found:
            raise ValueError(f"{name}: unsupported HF dots1 feature(s): {'; '.join(found)}")
        heads = values["num_attention_heads"]
        return cls(
            name=name,
            num_layers=layers,
            hidden_size=values["hidden_size"],
            num_attention_heads=heads,
            num_query_groups=values["num_key_value_heads"] or heads,
            head_dim=values.get("head_dim") or values["hidden_size"] // heads,
            ffn_hidden_size=values["intermediate_size"],
            num_experts=values["n_routed_experts"],
            moe_ffn_hidden_size=values["moe_intermediate_size"],
            moe_router_topk=values["num_experts_per_tok"],
            vocab_size=values["vocab_size"],
            num_dense_layers=values["first_k_dense_replace"],
            num_shared_experts=values["n_shared_experts"],
            moe_router_topk_scaling_factor=values["routed_scaling_factor"],
            max_position_embeddings=values["max_position_embeddings"],
            rotary_base=float(theta),
            norm_epsilon=values["rms_norm_eps"],
            init_method_std=values["initializer_range"],
            untie_embeddings=not values["tie_word_embeddings"],
        )


# transformers' Dots1Config defaults (5.x) for the keys from_hf_config reads.
_HF_DOTS1_DEFAULTS: dict[str, Any] = dict(
    vocab_size=152064, hidden_size=4608, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=62,
    num_attention_heads=32, num_key_value_heads=32, n_group=1, topk_group=1, first_k_dense_replace=0,
    norm_topk_prob=False, hidden_act="silu", max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6,
    tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False, routed_scaling_factor=1.0,
    sliding_window=4096, max_window_layers=62,
)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
