#!/usr/bin/env python
"""Write example candidate-scoring requests in OpenAI batch (JSONL) format.

Every line is one ``POST /v1/chat/completions`` request: the same system rubric
(so prefix caching can share it) and one generated candidate profile, asking for
a JSON object that matches the ``candidate_score`` schema.  Profiles come from a
seeded RNG, so the output is byte-for-byte reproducible, and the first N lines
are the same whatever ``--count`` is.

Usage::

    python scripts/make_examples.py [--count 200] [--model tiny-random]
                                    [--out examples/candidates.jsonl] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "examples" / "candidates.jsonl"

RUBRIC = """\
You are a careful technical recruiter at Northwind Analytics. You screen applicants for the role of \
Senior Backend Engineer on the Data Platform team, and you score each candidate profile you are given.

About the role: the team builds and runs the services that ingest, store and serve customer analytics \
data. The stack is Python and Go services on Kubernetes, PostgreSQL and Redis for state, Kafka for \
events, and Terraform on AWS for infrastructure. The engineer will own services end to end: design, \
code review, deployment, on-call and incident follow-up. The role is hybrid, with two office days a \
week in Berlin, or remote within two hours of Central European Time.

Must have:
1. At least five years of professional software engineering, including three or more on backend or \
distributed systems.
2. Strong Python or Go, and solid SQL.
3. Experience running production services: monitoring, alerting, debugging incidents, fixing root causes.

Nice to have: Kafka or another event bus, Kubernetes, Terraform, data pipelines, mentoring other \
engineers, and experience in analytics, fintech or another data-heavy domain.

How to score, from 0 to 100:
- Relevant experience (40 points): years and depth in backend work, scale and complexity of the \
systems, and ownership of outcomes rather than tasks.
- Technical skills (30 points): the must-have languages and tools first, then the nice-to-have ones. \
Do not reward long lists of buzzwords without evidence from the roles.
- Impact and leadership (20 points): shipped results, measurable improvements, mentoring, leading \
projects across teams.
- Education and growth (10 points): a relevant degree or equivalent practical learning, certifications, \
and a clear trajectory. Never penalise a candidate for a non-traditional path.

Recommendation: "strong_yes" for 85 or more, "yes" for 70 to 84, "maybe" for 50 to 69, and "no" below \
50. Judge only what the profile says about skills and experience. Ignore name, age, gender, \
nationality and any other personal attribute, and do not guess them.

Answer with a single JSON object and nothing else: an integer "score", a "recommendation", and \
"reasons", a list of at most three short reasons, each under fifteen words, that justify the score."""

SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "recommendation": {"type": "string", "enum": ["strong_yes", "yes", "maybe", "no"]},
        "reasons": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["score", "recommendation", "reasons"],
    "additionalProperties": False,
}

RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "candidate_score", "strict": True, "schema": SCHEMA},
}

FIRST_NAMES = [
    "Amara",
    "Ben",
    "Chloe",
    "Diego",
    "Elena",
    "Farah",
    "Gabriel",
    "Hana",
    "Ivan",
    "Jia",
    "Kwame",
    "Laila",
    "Mateo",
    "Nadia",
    "Oliver",
    "Priya",
    "Quentin",
    "Rosa",
    "Samuel",
    "Tomoko",
    "Usman",
    "Valentina",
    "Wei",
    "Ximena",
    "Yusuf",
    "Zoe",
    "Aisha",
    "Bruno",
    "Carmen",
    "Dmitri",
    "Esther",
    "Felix",
    "Grace",
    "Hiroshi",
    "Ingrid",
    "Jonas",
    "Keiko",
    "Lucas",
    "Maya",
    "Noah",
    "Olga",
    "Pedro",
    "Ruth",
    "Sofia",
    "Tariq",
    "Ulla",
    "Viktor",
]
LAST_NAMES = [
    "Adeyemi",
    "Becker",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fernandes",
    "Garcia",
    "Haddad",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lindqvist",
    "Martins",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Umarov",
    "Varga",
    "Walsh",
    "Xu",
    "Yilmaz",
    "Zhang",
    "Novak",
    "Silva",
    "Murphy",
    "Khan",
    "Moreau",
    "Andersson",
    "Mensah",
    "Reyes",
    "Kim",
]
CITIES = [
    "Berlin",
    "Hamburg",
    "Munich",
    "Amsterdam",
    "Warsaw",
    "Prague",
    "Lisbon",
    "Madrid",
    "Vienna",
    "Zurich",
    "Stockholm",
    "Copenhagen",
    "Paris",
    "Dublin",
    "London",
    "Kyiv",
    "Tallinn",
    "Budapest",
    "Barcelona",
    "Milan",
]
COMPANIES = [
    "Acme Payments",
    "Globex Logistics",
    "Initech",
    "Umbrella Health",
    "Hooli",
    "Stark Energy",
    "Wayne Fintech",
    "Tyrell Robotics",
    "Cyberdyne Systems",
    "Vandelay Imports",
    "Aperture Labs",
    "Pied Piper",
    "Monarch Travel",
    "Oscorp Biotech",
    "Nakatomi Insurance",
    "Soylent Foods",
    "Massive Dynamic",
    "Gringotts Bank",
    "Wonka Retail",
    "Bluth Real Estate",
]
INDUSTRIES = [
    "fintech",
    "e-commerce",
    "healthcare",
    "logistics",
    "insurance",
    "gaming",
    "adtech",
    "telecom",
    "energy",
    "travel",
    "analytics",
    "public sector",
]
ROLE_TITLES = [
    "Backend Engineer",
    "Software Engineer",
    "Full Stack Developer",
    "Data Engineer",
    "Platform Engineer",
    "Site Reliability Engineer",
    "DevOps Engineer",
    "Frontend Developer",
    "Machine Learning Engineer",
    "QA Automation Engineer",
    "Mobile Developer",
    "Data Analyst",
]
CORE_SKILLS = ["Python", "Go", "SQL", "PostgreSQL", "Redis", "Kafka", "Kubernetes", "Terraform", "AWS"]
OTHER_SKILLS = [
    "Java",
    "Kotlin",
    "Rust",
    "TypeScript",
    "JavaScript",
    "React",
    "Vue",
    "Node.js",
    "Django",
    "Flask",
    "FastAPI",
    "Spring Boot",
    "Celery",
    "RabbitMQ",
    "MySQL",
    "MongoDB",
    "Elasticsearch",
    "Docker",
    "GCP",
    "Azure",
    "Airflow",
    "Spark",
    "dbt",
    "Snowflake",
    "BigQuery",
    "gRPC",
    "GraphQL",
    "Prometheus",
    "Grafana",
    "OpenTelemetry",
    "Linux",
    "Bash",
    "CI/CD",
    "GitHub Actions",
    "pandas",
    "PyTorch",
    "Swift",
    "C++",
    "Scala",
    "Ruby on Rails",
    "PHP",
]
ACHIEVEMENTS = [
    "led the migration of a monolith to {n} services on Kubernetes",
    "cut p99 API latency by {pct}% by reworking the caching layer",
    "built an event pipeline on Kafka handling {k}K messages per second",
    "owned on-call for the payments API and halved incident count in a year",
    "designed the PostgreSQL schema and partitioning for a {tb} TB analytics store",
    "mentored {n} junior engineers, two of whom were promoted",
    "automated infrastructure with Terraform, reducing environment setup from days to minutes",
    "shipped a customer-facing reporting dashboard used by {k}K users",
    "introduced contract testing, reducing integration failures by {pct}%",
    "maintained internal admin tools and fixed bugs reported by support",
    "wrote data transformations in dbt and scheduled them with Airflow",
    "built the mobile checkout flow and its A/B testing setup",
    "reduced cloud costs by {pct}% through rightsizing and spot instances",
    "implemented the search service on Elasticsearch with typo tolerance",
    "ran a team of {n} engineers delivering the new onboarding flow",
    "trained and deployed fraud detection models serving {k}K predictions per hour",
    "wrote end-to-end test suites and kept the release pipeline green",
    "built dashboards and alerts in Grafana and Prometheus for {n} services",
]
DEGREES = [
    "BSc in Computer Science",
    "MSc in Computer Science",
    "BEng in Software Engineering",
    "BSc in Mathematics",
    "MSc in Data Science",
    "PhD in Physics",
    "BA in Economics",
    "BSc in Information Systems",
    "MEng in Electrical Engineering",
    "coding bootcamp certificate (web development)",
    "no degree; self-taught",
    "BSc in Business Informatics",
]
UNIVERSITIES = [
    "TU Berlin",
    "University of Warsaw",
    "Delft University of Technology",
    "University of Lisbon",
    "ETH Zurich",
    "KTH Stockholm",
    "University College Dublin",
    "Charles University",
    "Politecnico di Milano",
    "University of Nairobi",
    "IIT Bombay",
    "University of Toronto",
]
CERTIFICATIONS = [
    "AWS Certified Solutions Architect",
    "Certified Kubernetes Administrator",
    "HashiCorp Terraform Associate",
    "Google Professional Data Engineer",
    "Scrum Master (PSM I)",
]
SUMMARY_OPENERS = [
    "Backend-focused engineer who enjoys",
    "Pragmatic developer with a taste for",
    "Engineer moving from product work towards",
    "Team player who likes",
    "Hands-on technical lead interested in",
    "Data-minded engineer who cares about",
]
SUMMARY_TOPICS = [
    "reliable distributed systems and clear ownership",
    "clean APIs, good tests and boring deployments",
    "platform and infrastructure work",
    "shipping features quickly with customers in mind",
    "data pipelines and analytics at scale",
    "frontend craft and design systems",
    "mentoring and growing small teams",
    "observability, on-call hygiene and incident reviews",
]
NOTICE = ["immediately", "2 weeks", "1 month", "2 months", "3 months"]
WORK_PREF = ["hybrid in Berlin", "remote (CET)", "remote (CET+2)", "onsite or hybrid", "open to relocation to Berlin"]
LANGUAGES = ["English", "German", "Spanish", "French", "Polish", "Portuguese", "Ukrainian", "Turkish", "Italian"]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        n=rng.randint(2, 12),
        pct=rng.choice([15, 20, 25, 30, 40, 60]),
        k=rng.choice([2, 5, 10, 20, 50, 120]),
        tb=rng.choice([2, 8, 15, 40]),
    )


def candidate_profile(rng: random.Random) -> str:
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    years = max(1, min(22, int(rng.gauss(7, 4))))
    # Mix core and other skills so candidates range from a good match to a poor one.
    n_core = rng.randint(0, 6)
    skills = rng.sample(CORE_SKILLS, n_core) + rng.sample(OTHER_SKILLS, rng.randint(2, 7))
    rng.shuffle(skills)

    # Walk back from the current role; seniority follows the years worked so far.
    roles = []
    end = years
    while end > 0 and len(roles) < 3:
        span = end if len(roles) == 2 else max(1, min(end, rng.randint(1, 6)))
        start = end - span
        mid = start + span / 2
        if mid < 2:
            level = "Junior"
        elif mid < 5:
            level = rng.choice(["", "", "Senior"])
        elif mid < 9:
            level = rng.choice(["Senior", "Senior", "", "Lead"])
        else:
            level = rng.choice(["Senior", "Staff", "Lead", "Principal"])
        title = f"{level} {rng.choice(ROLE_TITLES)}".strip()
        company = rng.choice(COMPANIES)
        industry = rng.choice(INDUSTRIES)
        achievement = _fill(rng.choice(ACHIEVEMENTS), rng)
        current = " (current)" if not roles else ""
        roles.append(f"- {title}{current}, {company} ({industry}), {span} yr{'s' if span != 1 else ''}: {achievement}.")
        end = start

    degree = rng.choice(DEGREES)
    if degree.startswith(("no degree", "coding bootcamp")):
        education = degree.capitalize() if degree[0].islower() else degree
    else:
        education = f"{degree}, {rng.choice(UNIVERSITIES)}"
    certs = rng.sample(CERTIFICATIONS, rng.choice([0, 0, 0, 1, 2]))
    langs = ["English", *rng.sample([lang for lang in LANGUAGES if lang != "English"], rng.randint(0, 2))]
    opener = "Early-career developer eager to grow in" if years <= 3 else rng.choice(SUMMARY_OPENERS)
    summary = f"{opener} {rng.choice(SUMMARY_TOPICS)}."

    lines = [
        f"Name: {name}",
        f"Location: {rng.choice(CITIES)}; prefers {rng.choice(WORK_PREF)}; notice period: {rng.choice(NOTICE)}",
        f"Years of experience: {years}",
        f"Skills: {', '.join(skills)}",
        "Recent roles:",
        *roles,
        f"Education: {education}",
    ]
    if certs:
        lines.append(f"Certifications: {', '.join(certs)}")
    lines.append(f"Languages: {', '.join(langs)}")
    lines.append(f"Summary: {summary}")
    return "\n".join(lines)


def iter_requests(count: int, model: str, seed: int) -> Iterator[dict]:
    rng = random.Random(seed)
    for i in range(1, count + 1):
        yield {
            "custom_id": f"cand-{i:05d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [
                    {"role": "system", "content": RUBRIC},
                    {"role": "user", "content": "Score this candidate.\n\n" + candidate_profile(rng)},
                ],
                "max_tokens": 96,
                "temperature": 0,
                "response_format": RESPONSE_FORMAT,
            },
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="number of requests (default 200)")
    parser.add_argument("--model", default="tiny-random", help="model name in each body (default tiny-random)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output file (default {DEFAULT_OUT}); '-' for stdout")
    parser.add_argument("--seed", type=int, default=7, help="RNG seed (default 7)")
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must be >= 0")

    if args.out == "-":
        out = sys.stdout
    else:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        out = path.open("w", encoding="utf-8", newline="\n")
    n_bytes = 0
    try:
        for request in iter_requests(args.count, args.model, args.seed):
            line = json.dumps(request, ensure_ascii=False, separators=(",", ":")) + "\n"
            out.write(line)
            n_bytes += len(line.encode("utf-8"))
    finally:
        if out is not sys.stdout:
            out.close()
    if args.out != "-":
        print(f"wrote {args.count} requests ({n_bytes / 1024:.0f} KiB) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
