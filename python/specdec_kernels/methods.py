"""The decoding methods by name: what `specdec generate --method` and `specdec bench e2e --methods` run.

A Decoder holds a target and builds what a method needs the first time it is used: the EAGLE drafter, the
EAGLE-3 drafter, the draft length predictor (AdaEAGLE), the intermediate model (HierSpec). A part that is missing (no head shipped
for this model, no predictor) is a MissingPart error saying how to get one.
"""
import os
from typing import Optional

from .decoding import GenerationResult, generate, speculative_generate
from .drafters import (
    DEFAULT_CHAIN,
    DEFAULT_TREE,
    DraftShape,
    Eagle3Drafter,
    EagleDrafter,
    LengthPredictor,
    NgramLookup,
    RootOnly,
    default_head_path,
    default_predictor_path,
    is_eagle3_folder,
    load_eagle3,
    load_predictor,
)
from .drafters.head_file import shipped_file
from .hierarchical import MIN_DRAFT, check_min_draft, hierarchical_generate
from .intermediate import default_recipe_path, derive_intermediate, load_intermediate
from .models import RUNNER_X_DIGITS, Transformer, load_model
from .planner import Planner, StepCosts, best_chain_lengths, step_costs
from .planner.calibration import load_prior

METHODS = {
    "vanilla": "plain decoding, one token per target forward",
    "pld": "prompt lookup alone (no draft head): each step verifies the lookup chain (drafters.ngram)",
    "chain": "the EAGLE head's chain (drafters.DEFAULT_CHAIN)",
    "chain-2": "the EAGLE head's chain of 2 draft tokens",
    "chain-3": "the EAGLE head's chain of 3 draft tokens",
    "eagle2": "EAGLE-2 dynamic trees (drafters.DEFAULT_TREE)",
    "chain-pld": "the head's chain with a prompt-lookup chain grafted in (drafters.ngram)",
    "eagle2-pld": "EAGLE-2 trees with a prompt-lookup chain grafted in",
    "ada": "AdaEAGLE: a chain of the length the predictor chooses each step (drafters.ldlp)",
    "eagle2-ada": "EAGLE-2 trees whose depth the predictor chooses each step",
    "ada-pld": "AdaEAGLE chains with a prompt-lookup chain grafted in",
    "hier": "HierSpec: trees verified by an intermediate model, their paths verified by the target as one chain",
    "eagle3": "the EAGLE-3 head's trees (drafters.eagle3; EAGLE3_SHAPE)",
    "eagle3-pld": "the EAGLE-3 head's trees with a prompt-lookup chain grafted in",
    "auto": "the planner's tree each step, from this machine's measured costs (planner/), with the prompt-lookup "
            "chain grafted in where its match makes it worth verifying (drafters.ngram)",
    "auto-tree": "the planner's tree alone (no prompt lookup)",
}
DEFAULT_METHOD = "chain-pld"  # the fastest measured on the embedded model (README, docs/performance.md)
HEADLESS = ("vanilla", "pld")
NEEDS_PREDICTOR = ("ada", "eagle2-ada", "ada-pld")
PLANNED = ("auto", "auto-tree")
EAGLE3 = ("eagle3", "eagle3-pld")
EAGLE3_SUFFIX = ".eagle3"  # heads/<model file name>.eagle3/: the shipped EAGLE-3 head's folder
EAGLE3_SHAPE = DEFAULT_TREE
FIXED_CHAINS = {"chain-2": DraftShape.chain(2), "chain-3": DraftShape.chain(3)}  # beside `chain`, for comparisons
# A rounded length of 0 (a plain step) is raised to one draft token: where the predictor says 0, the head's first
# token is still accepted ~27% of the time, and drafting and verifying it costs ~7% of a plain step on CPUs
# (docs/notes.md, "Draft-length predictor (LDLP)"). A predictor with a length table instead gets the lengths that
# pay under this machine's measured costs (0 included), which replace rounding and this floor.
ADA_MIN_LENGTH = 1


class MissingPart(Exception):
    """A method needs a part (head, predictor, intermediate) that this model does not have."""


class DeferredDrafter:
    """A drafter built when first used, a fresh one until then (reset does nothing). speculative_generate resets
    its drafter before the prefill's token is out and first uses it after: the drafter's set-up (reading the
    head, quantizing and packing it: ~0.3 s for the embedded model's) then follows the first token, not precedes
    it."""

    def __init__(self, build, feature_layers: tuple = ()):
        self._build, self._drafter = build, None
        self.feature_layers = feature_layers  # known before the build: the prefill asks for it

    def reset(self):
        if self._drafter is not None:
            self._drafter.reset()

    def __getattr__(self, name):  # only for what the instance lacks: the drafter's own attributes
        if self._drafter is None:
            self._drafter = self._build()
        return getattr(self._drafter, name)


class Decoder:
    """A target and the parts of the methods that use them. The target loads when first used (unless given),
    each part when a method first needs it; `check` finds a missing part's file before anything loads."""

    def __init__(self, model_path: str, model: Optional[Transformer] = None, head_path: Optional[str] = None,
                 predictor_path: Optional[str] = None, intermediate_path: Optional[str] = None,
                 tree: DraftShape = DEFAULT_TREE, chain: DraftShape = DEFAULT_CHAIN, min_draft: int = MIN_DRAFT,
                 x_digits: int = RUNNER_X_DIGITS, recalibrate: bool = False, costs: Optional[StepCosts] = None,
                 eagle3_path: Optional[str] = None):
        check_min_draft(min_draft, tree)
        self.model_path, self._model, self.x_digits = model_path, model, x_digits
        # --head names either kind of head: an EAGLE-3 folder replaces the EAGLE-3 head (eagle3_path, else the
        # shipped one), a file the other
        self.eagle3_path = eagle3_path or shipped_file(model_path, EAGLE3_SUFFIX)
        self._plan_with_eagle3 = head_path is not None and is_eagle3_folder(head_path)
        if self._plan_with_eagle3:
            self.eagle3_path, head_path = head_path, None
        self.head_path = head_path or default_head_path(model_path)
        self.predictor_path = predictor_path or default_predictor_path(model_path)
        self.intermediate_source = intermediate_path or default_recipe_path(model_path)
        self.tree, self.chain, self.min_draft, self.recalibrate = tree, chain, min_draft, recalibrate
        self._drafter = self._drafter3 = self._predictor = self._intermediate = self._planner = None
        self._costs = costs  # the planner's step costs; None: measured on this machine (cached)

    @property
    def model(self) -> Transformer:
        if self._model is None:
            self._model = load_model(self.model_path, x_digits=self.x_digits)
        return self._model

    def check(self, method: str) -> None:
        """A MissingPart error naming what `method` needs and this model lacks (nothing is loaded)."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        if (method in EAGLE3 or method in PLANNED) and self.planned_head is None:
            raise MissingPart(f"no EAGLE head for {self.model_path} (method {method}): train one (python -m "
                              "specdec_kernels.train.eagle3) and pass --head")
        if method in EAGLE3 and self.eagle3_path is None:
            raise MissingPart(f"no EAGLE-3 head for {self.model_path} (method {method}): train one (python -m "
                              "specdec_kernels.train.eagle3) and pass --head FOLDER")
        if method not in HEADLESS + EAGLE3 + PLANNED and self.head_path is None:
            raise MissingPart(f"no EAGLE head for {self.model_path} (method {method}): train one (python -m "
                              "specdec_kernels.train.eagle) and pass --head")
        if method in NEEDS_PREDICTOR and self.predictor_path is None:
            raise MissingPart(f"no draft length predictor for {self.model_path} (methods {', '.join(NEEDS_PREDICTOR)}): "
                              "train one with python -m specdec_kernels.train.ldlp --out PATH and pass --predictor PATH")
        if method == "hier" and self.intermediate_source is None:
            raise MissingPart(f"no intermediate model for {self.model_path} (method hier): pass --intermediate PATH (a "
                              "GGUF file with the same tokenizer)")
        for path in (self.head_path, self.eagle3_path, self.predictor_path, self.intermediate_source):
            if path is not None and not os.path.exists(path):
                raise MissingPart(f"{path}: no such file")

    @property
    def drafter(self) -> EagleDrafter:
        if self._drafter is None:
            self._drafter = EagleDrafter.from_file(self.head_path, self.model)
        return self._drafter

    @property
    def drafter3(self) -> Eagle3Drafter:
        if self._drafter3 is None:
            self._drafter3 = Eagle3Drafter(self.model, load_eagle3(self.eagle3_path, self.model))
        return self._drafter3

    @property
    def planned_head(self) -> Optional[str]:
        """The head the planner drafts with: an EAGLE-3 head given as --head, else the EAGLE-1/2 head where there is
        one (the shipped one accepts more than the shipped EAGLE-3 head: docs/design.md 4.10), else the EAGLE-3 head."""
        if self._plan_with_eagle3 or self.head_path is None:
            return self.eagle3_path
        return self.head_path

    @property
    def planned_drafter(self):
        return self.drafter3 if self.planned_head == self.eagle3_path else self.drafter

    @property
    def predictor(self) -> LengthPredictor:
        if self._predictor is None:
            predictor = load_predictor(self.predictor_path, self.model)
            if predictor.length_table is not None:  # lengths that pay on this machine (its costs: measured, cached)
                costs = self._costs or step_costs(self.model, self.drafter, self.model_path, self.head_path,
                                                  self.recalibrate)
                predictor.bin_lengths = best_chain_lengths(predictor.length_table.counts, costs)
            predictor.min_length = ADA_MIN_LENGTH
            self._predictor = predictor
        return self._predictor

    @property
    def intermediate(self) -> Transformer:
        if self._intermediate is None:
            if self.intermediate_source.endswith(".json"):
                self._intermediate = derive_intermediate(self.model, self.intermediate_source, self.drafter)
            else:
                self._intermediate = load_intermediate(self.intermediate_source, self.model, self.model_path)
        return self._intermediate

    @property
    def planner(self) -> Planner:
        """The planner of this machine, model and head: costs measured once (cached; recalibrate: measured again),
        acceptance starting from the head's calibrated prior when it ships one (planner.calibration)."""
        if self._planner is None:
            costs = self._costs or step_costs(self.model, self.planned_drafter, self.model_path, self.planned_head,
                                              self.recalibrate)
            self._planner = Planner(costs, prior=load_prior(self.planned_head))
        return self._planner

    def generate(self, method: str, prompt_ids, max_new_tokens: int, **options) -> GenerationResult:
        """Decode with `method`; options: temperature, top_p, top_k, seed, stop_tokens, stream."""
        self.check(method)
        if method == "vanilla":
            return generate(self.model, prompt_ids, max_new_tokens, **options)
        if method == "pld":
            return speculative_generate(self.model, RootOnly(), prompt_ids, max_new_tokens, shape=DraftShape.chain(0),
                                        lookup=NgramLookup(), **options)
        if method == "hier":
            return hierarchical_generate(self.model, self.intermediate, self.drafter, prompt_ids, max_new_tokens,
                                         shape=self.tree, min_draft=self.min_draft, **options)
        if method in PLANNED:
            return speculative_generate(self.model, self.planned_drafter, prompt_ids, max_new_tokens,
                                        planner=self.planner, lookup=NgramLookup() if method == "auto" else None,
                                        **options)
        if method in EAGLE3:
            return speculative_generate(self.model, self.drafter3, prompt_ids, max_new_tokens, shape=EAGLE3_SHAPE,
                                        lookup=NgramLookup() if method.endswith("-pld") else None, **options)
        ada = method in NEEDS_PREDICTOR
        shape = (self.tree if method.startswith("eagle2") else
                 DraftShape.chain(self.predictor.config.k_max) if ada else FIXED_CHAINS.get(method, self.chain))
        drafter = self._drafter or DeferredDrafter(lambda: self.drafter)  # built after the first token is out
        return speculative_generate(self.model, drafter, prompt_ids, max_new_tokens, shape=shape,
                                    lookup=NgramLookup() if method.endswith("-pld") else None,
                                    predictor=self.predictor if ada else None, **options)
