#!/usr/bin/env python
"""Generate a tiny random-weight chat model for tests and local development.

The model is a two-layer ``Qwen2ForCausalLM`` (head_dim 64, which the vLLM CPU
attention kernels accept) with a byte-level BPE tokenizer trained on a small
recruiting/candidate corpus built inside this script.  Everything is seeded, so
two runs of the same recipe produce identical files.  The weights are random
except for a small, deliberate steer (see ``steer_outputs``) that makes greedy
decoding terminate: JSON-schema requests come back as short valid JSON and free
text stops after a few tokens, instead of running to max_tokens.

Usage::

    python scripts/make_tiny_model.py [OUT_DIR] [--force] [--dtype float32|bfloat16] [--variant NAME]

``--variant`` picks one of ``VARIANTS``: ``tiny-random`` (the default) or
``tiny-random-2k``, a second model that differs from the first in its
vocabulary (2,048 tokens) and its seed, so tests can tell the two apart.
``OUT_DIR`` defaults to ``var/models/<variant>`` (relative to the repository
root).  The directory is complete once ``.complete`` exists and records the
recipe; if it does, the script exits at once without regenerating.  The model is
built in a temporary sibling directory and moved into place, so a crash or a
concurrent run never leaves a half-written model under ``OUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Bump when anything below changes the generated files.
RECIPE_VERSION = 1
MARKER = ".complete"

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "var" / "models"

SEED = 20261127
VOCAB_SIZE = 3072  # including special tokens; the trainer may stop short
# name -> (seed, vocabulary target). The first is the original recipe, unchanged:
# its files and its .complete marker stay exactly what recipe v1 made.
VARIANTS = {"tiny-random": (SEED, VOCAB_SIZE), "tiny-random-2k": (SEED + 1, 2048)}
DEFAULT_VARIANT = "tiny-random"

BOS = "<|startoftext|>"
EOS = "<|im_end|>"  # end of an assistant turn: what generation stops on
PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD, IM_START, EOS, BOS]
# Ordinary (non-special) added tokens, as Qwen3 has them.
THINK_TOKENS = ["<think>", "</think>"]

# ChatML, as used by Qwen.  ``enable_thinking`` (a chat_template_kwargs value)
# is honoured the way Qwen3 does it: when it is explicitly false, the generation
# prompt ends with an empty think block; otherwise it changes nothing.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- elif message['content'] %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

MODEL_SHAPE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,  # head_dim = 128 / 2 = 64
    num_key_value_heads=1,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,  # the output head is steered separately, see steer_outputs()
    use_sliding_window=False,
    hidden_act="silu",
    initializer_range=0.02,
)

# Output steering (see steer_outputs): a plain random model, decoding greedily,
# loops inside a JSON string until max_tokens.  These nudge it to close strings
# and to stop, while leaving the other weights random.
STEER_CONST = 0.06  # constant residual component; ~3x the std of the random embeddings
STEER_QUOTE = 3.0  # head weight on it for tokens containing '"' (logit bonus ~6)
STEER_ENDER = 0.1  # embedding component of tokens ending in '.' or '}' or containing '"'
STEER_EOS = 4.0  # head weight of EOS on that component (logit bonus ~10)

# --------------------------------------------------------------------------
# Training corpus: a few hundred sentences of recruiting vocabulary.
# --------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


FIRST_NAMES = _words(
    """
Amara Ben Chloe Diego Elena Farah Gabriel Hana Ivan Jia Kwame Laila Mateo Nadia Oliver Priya
Quentin Rosa Samuel Tomoko Usman Valentina Wei Ximena Yusuf Zoe Aisha Bruno Carmen Dmitri Esther
Felix Grace Hiroshi Ingrid Jonas Keiko Lucas Maya Noah
"""
)
LAST_NAMES = _words(
    """
Adeyemi Becker Costa Dubois Eriksen Fernandes Garcia Haddad Ito Jensen Kowalski Lindqvist
Martins Nakamura Okafor Petrov Quinn Rossi Schmidt Tanaka Umarov Varga Walsh Xu Yilmaz Zhang
Novak Silva Murphy Khan
"""
)
SKILLS = _words(
    """
Python Java Go Rust TypeScript JavaScript Kotlin Swift SQL PostgreSQL MySQL Redis Kafka RabbitMQ
Celery Django Flask FastAPI React Vue Angular Node.js Spring Kubernetes Docker Terraform AWS GCP
Azure Linux Bash Spark Airflow dbt Pandas NumPy PyTorch TensorFlow scikit-learn GraphQL gRPC
REST microservices CI/CD Jenkins GitHub Git observability Prometheus Grafana Elasticsearch
MongoDB Snowflake BigQuery Tableau Excel Figma testing security networking embedded C++ C# .NET
Scala Ruby Rails PHP
"""
)
TITLES = [
    "Software Engineer",
    "Senior Software Engineer",
    "Staff Engineer",
    "Backend Developer",
    "Frontend Developer",
    "Full Stack Developer",
    "Data Engineer",
    "Data Scientist",
    "Machine Learning Engineer",
    "DevOps Engineer",
    "Site Reliability Engineer",
    "Engineering Manager",
    "Product Manager",
    "QA Engineer",
    "Security Engineer",
    "Mobile Developer",
    "Solutions Architect",
    "Technical Lead",
    "Analytics Engineer",
    "Platform Engineer",
    "Recruiter",
    "Talent Acquisition Partner",
    "Hiring Manager",
]
COMPANIES = _words(
    """
Acme Globex Initech Umbrella Hooli Stark Wayne Tyrell Cyberdyne Soylent Vandelay Wonka Aperture
Massive Dynamic Pied Piper Gringotts Monarch Oscorp Nakatomi
"""
)
DEGREES = [
    "BSc in Computer Science",
    "MSc in Computer Science",
    "BEng in Software Engineering",
    "BSc in Mathematics",
    "MSc in Data Science",
    "PhD in Machine Learning",
    "BA in Economics",
    "BSc in Physics",
    "MBA",
    "bootcamp certificate in web development",
    "BSc in Information Systems",
    "MEng in Electrical Engineering",
]
UNIVERSITIES = _words(
    """
Toronto Lisbon Delft Nairobi Melbourne Warsaw Seoul Edinburgh Austin Munich Bangalore Madrid
Helsinki Santiago Manila
"""
)
ADJECTIVES = _words(
    """
strong solid excellent limited relevant proven hands-on extensive junior senior reliable curious
pragmatic collaborative independent detail-oriented motivated experienced promising adequate
weak outstanding
"""
)
VERBS = _words(
    """
led built designed shipped maintained migrated scaled mentored automated optimized refactored
launched owned improved reduced delivered introduced monitored debugged documented
"""
)
OBJECTS = [
    "a payment platform",
    "an internal API",
    "a data pipeline",
    "the hiring dashboard",
    "a search service",
    "a recommendation engine",
    "the billing system",
    "a mobile app",
    "a CI pipeline",
    "the monitoring stack",
    "a feature store",
    "an event bus",
    "the onboarding flow",
    "a reporting tool",
]
RECRUIT_WORDS = _words(
    """
candidate candidates applicant resume CV interview screening shortlist offer salary rubric score
scoring recommendation reasons hire hiring role position job description requirements
qualifications experience years skills education summary leadership communication teamwork
ownership impact seniority culture fit remote onsite hybrid relocation visa notice period
references portfolio assessment evaluation strengths weaknesses concerns gaps growth potential
team manager
"""
)
RECOMMENDATIONS = ["strong_yes", "yes", "maybe", "no"]
INDUSTRIES = _words(
    """
fintech healthcare insurance logistics retail ecommerce gaming telecom automotive aerospace
biotech pharmaceutical education government nonprofit energy manufacturing hospitality media
advertising consulting banking cybersecurity agriculture transportation construction realestate
marketplace travel semiconductor robotics
"""
)
CITIES = _words(
    """
Amsterdam Berlin Boston Chicago Dublin Lagos London Lyon Manchester Montreal Mumbai Oslo Paris
Porto Prague Singapore Stockholm Sydney Tallinn Tokyo Vancouver Vienna Zurich Barcelona
Copenhagen Denver Seattle Atlanta Cairo Istanbul Jakarta Kyiv
"""
)
BUSINESS_WORDS = _words(
    """
accomplished accountability accuracy achieved acquisition adaptable administration advanced
agile alignment ambiguity analytical analyzed architecture articulate attention availability
background backlog benchmark budget business capability certification certified challenging
changes clients coaching codebase collaborated commercial commitment compensation competencies
complexity compliance conflict consistent contract contributed contributor coordinated critical
cross-functional customers deadlines decisions dedicated deployment depth development
distributed diversity domain effective efficiency employer employment engagement enterprise
environment equity estimation excellent expertise exposure facilitated feedback flexible focused
framework freelance fundamentals governance graduated guidance headcount hiring improvement
incident individual industry infrastructure initiative innovation insights integration
internship interviewer judgement knowledge latency learning levels licensing maintenance
management mentorship methodology metrics milestones mindset modernization negotiation
objectives onboarding operations organization outcomes ownership participation partnership
performance permanent persistence pipeline planning practices presentation prioritization
problem-solving process productivity professional proficiency progression projects promotion
qualified quality rationale recognition recruiting reliability reporting requirements resilience
responsibilities responsive retention revenue reviewed roadmap sabbatical scalability schedule
seniority sourcing specialist stakeholders standards startup strategy structured successful
supervision sustainable technical tenure throughput transferable transition troubleshooting
understanding unstructured validation versatile visibility volunteer workflow workload written
verbal bilingual fluent English Spanish French German Portuguese Mandarin Arabic Hindi Japanese
Polish
"""
)

TEMPLATES = [
    "{name} has {years} years of experience as a {title} at {company}.",
    "The candidate {name} {verb} {obj} using {skill} and {skill2}.",
    "{name} holds a {degree} from the University of {uni}.",
    "Skills: {skill}, {skill2}, {skill3}.",
    "Score the candidate from 0 to 100 and give a recommendation.",
    "Recommendation: {rec}. Score: {score}.",
    "Reasons: {adj} {skill} experience; {adj2} {word}.",
    "The {word} shows {adj} {word2} and {adj2} {skill} skills.",
    "Last role: {title} at {company} ({years} years).",
    "Summary: {adj} {title} who {verb} {obj}.",
    "We are hiring a {title} with {skill} and {skill2} experience.",
    "The hiring manager asked for a {adj} {word} with {years}+ years of {skill}.",
    '{{"score": {score}, "recommendation": "{rec}", "reasons": ["{adj} {skill}"]}}',
    "Return only JSON with the fields score, recommendation and reasons.",
    "Education: {degree}. Location: {uni}. Notice period: {years} weeks.",
    "Concerns: {adj} {word}, limited {skill} exposure.",
    "{name} worked in {industry} in {city} and showed {biz} and {biz2}.",
    "Previous employer: {company} ({industry}, {city}). Key {biz}: {biz2}.",
    "The {biz} of this {word} is {adj}; {biz2} needs {biz3}.",
]


def build_corpus(n_sentences: int = 600) -> list[str]:
    rng = random.Random(SEED)
    out = []
    for i in range(n_sentences):
        template = TEMPLATES[i % len(TEMPLATES)]
        s1, s2, s3 = rng.sample(SKILLS, 3)
        out.append(
            template.format(
                name=f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
                years=rng.randint(1, 25),
                title=rng.choice(TITLES),
                company=rng.choice(COMPANIES),
                verb=rng.choice(VERBS),
                obj=rng.choice(OBJECTS),
                skill=s1,
                skill2=s2,
                skill3=s3,
                degree=rng.choice(DEGREES),
                uni=rng.choice(UNIVERSITIES),
                rec=rng.choice(RECOMMENDATIONS),
                score=rng.randint(0, 100),
                adj=rng.choice(ADJECTIVES),
                adj2=rng.choice(ADJECTIVES),
                word=rng.choice(RECRUIT_WORDS),
                word2=rng.choice(RECRUIT_WORDS),
                industry=rng.choice(INDUSTRIES),
                city=rng.choice(CITIES),
                biz=rng.choice(BUSINESS_WORDS),
                biz2=rng.choice(BUSINESS_WORDS),
                biz3=rng.choice(BUSINESS_WORDS),
            )
        )
    # Every word of the vocabulary at least once, so the merges cover them.
    for words in (
        FIRST_NAMES,
        LAST_NAMES,
        SKILLS,
        TITLES,
        COMPANIES,
        DEGREES,
        UNIVERSITIES,
        ADJECTIVES,
        VERBS,
        RECRUIT_WORDS,
        RECOMMENDATIONS,
        INDUSTRIES,
        CITIES,
        BUSINESS_WORDS,
        OBJECTS,
    ):
        out.append(" ".join(words))
    return out


# --------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------


def recipe(dtype: str, variant: str = DEFAULT_VARIANT) -> dict:
    seed, vocab_size = VARIANTS[variant]
    made = {
        "recipe_version": RECIPE_VERSION,
        "seed": seed,
        "dtype": dtype,
        "vocab_size_target": vocab_size,
        **MODEL_SHAPE,
        "steer": [STEER_CONST, STEER_QUOTE, STEER_ENDER, STEER_EOS],
    }
    if variant != DEFAULT_VARIANT:  # the default's marker keeps its v1 content
        made["variant"] = variant
    return made


def is_complete(out_dir: Path, want: dict) -> bool:
    marker = out_dir / MARKER
    try:
        return json.loads(marker.read_text()) == want
    except (OSError, ValueError):
        return False


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(THINK_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, dtype: str, seed: int = SEED):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPE,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    model = Qwen2ForCausalLM(config)
    steer_outputs(model, tokenizer)
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.eval()
    gen = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, gen


def steer_outputs(model, tokenizer) -> dict:
    """Make the random model's greedy output terminate.

    Two hidden dimensions get a fixed meaning: dimension 0 of every token
    embedding is a constant, so after the final RMSNorm it is a large positive
    value at every position, and the output head gives tokens containing '"' a
    weight on it: they get a logit bonus, so JSON strings (which the grammar
    otherwise lets run on forever) close within a few tokens.  Dimension 1 is
    set only for tokens that end in '.' or '}', and only EOS reads it: after
    such a token EOS wins, so unconstrained text and finished JSON both stop.
    """
    import torch

    n = len(tokenizer)
    pieces = [tokenizer.decode([i]) for i in range(n)]
    special = set(tokenizer.all_special_ids)
    quote = [i for i, p in enumerate(pieces) if '"' in p and i not in special]
    enders = [i for i, p in enumerate(pieces) if (p.rstrip().endswith((".", "}")) or '"' in p) and i not in special]
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        emb[:, 0] = STEER_CONST
        emb[:, 1] = 0.0
        emb[enders, 1] = STEER_ENDER
        head[:, 0:2] = 0.0
        head[quote, 0] = STEER_QUOTE
        head[tokenizer.eos_token_id, 1] = STEER_EOS
    return {"quote_tokens": len(quote), "ender_tokens": len(enders)}


def generate(out_dir: Path, dtype: str, variant: str = DEFAULT_VARIANT) -> dict:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    seed, vocab_size = VARIANTS[variant]
    want = recipe(dtype, variant)
    try:
        tokenizer = build_tokenizer(vocab_size)
        model, gen = build_model(tokenizer, dtype, seed)
        model.save_pretrained(tmp)
        gen.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # mkdtemp (and safetensors) create private files; make the model world-readable.
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        info = {
            "vocab_size": len(tokenizer),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        (tmp / MARKER).write_text(json.dumps(want, sort_keys=True))  # written last
        if out_dir.exists():
            if is_complete(out_dir, want):  # a concurrent run won the race
                return info
            shutil.rmtree(out_dir)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not is_complete(out_dir, want):
                raise
        return info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default=None, help=f"target directory (default: {MODELS_DIR}/VARIANT)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=DEFAULT_VARIANT, help="which tiny model")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="bfloat16",
        help="weight dtype (default bfloat16: with dtype=auto vLLM on this CPU runs bf16 anyway and "
        "downcasts a float32 checkpoint with one warning per tensor)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    args = parser.parse_args(argv)

    out_dir = Path(args.out_dir).resolve() if args.out_dir else MODELS_DIR / args.variant
    want = recipe(args.dtype, args.variant)
    if not args.force and is_complete(out_dir, want):
        print(f"tiny model already present at {out_dir} (recipe v{RECIPE_VERSION}); nothing to do")
        return 0

    t0 = time.monotonic()
    info = generate(out_dir, args.dtype, args.variant)
    print(
        f"wrote tiny model to {out_dir}: Qwen2ForCausalLM, {info['parameters']:,} parameters, "
        f"vocab {info['vocab_size']}, dtype {args.dtype}, recipe v{RECIPE_VERSION} "
        f"in {time.monotonic() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
