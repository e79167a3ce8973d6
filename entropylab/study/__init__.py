"""Study harness: splits, warm starts, arms and a sharded runner, metrics, claims and verdicts.

See ``entropylab/study/README.md`` for how a study is written. Public names:
"""

from entropylab.study.analyse import analyse, load_jobs, update_readme
from entropylab.study.calibration import CompetenceCriteria, check_competence, select_difficulty
from entropylab.study.claims import Claim, ClaimResult, JobData, evaluate_claims, job_value
from entropylab.study.cli import main
from entropylab.study.lawfit import compare_law_models, law_advantage
from entropylab.study.metrics import (
    STEP_SCHEMA,
    EvalLog,
    Progress,
    StepLogger,
    compress_logs,
    eval_pass_at_k,
    from_trainer_record,
    pass_at_k,
    read_records,
)
from entropylab.study.runner import Arm, Job, JobContext, Runner, StudySpec, crn_seed
from entropylab.study.splits import RoutedTask, SplitSpec, SplitTask, make_splits, split_of

__all__ = [
    "STEP_SCHEMA",
    "Arm",
    "Claim",
    "ClaimResult",
    "CompetenceCriteria",
    "EvalLog",
    "Job",
    "JobContext",
    "JobData",
    "Progress",
    "RoutedTask",
    "Runner",
    "SplitSpec",
    "SplitTask",
    "StepLogger",
    "StudySpec",
    "analyse",
    "check_competence",
    "compare_law_models",
    "compress_logs",
    "crn_seed",
    "eval_pass_at_k",
    "evaluate_claims",
    "from_trainer_record",
    "job_value",
    "law_advantage",
    "load_jobs",
    "main",
    "make_splits",
    "pass_at_k",
    "read_records",
    "select_difficulty",
    "split_of",
    "update_readme",
]
