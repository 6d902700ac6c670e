"""The Model Registry: every trained model a version, the best one on the data the alias `champion`.

    lyricist-generate --model models:/lyricist@champion --prefix 分开
    mlflow models serve -m models:/lyricist@champion -p 5001 --env-manager local

A training run with a logged model registers it under logger.registered_model_name, the version
tagged with its best val perplexity (`val_ppl`) and its data: the raw corpus's hash (`data_md5`)
and the hash of the encoded splits and vocabulary it read (`encoded_md5`), as the run.
The alias moves to the new version only when there is no champion yet, or the new val perplexity
beats the champion's on the same data (both hashes): perplexities on other data do not compare, so
a model trained on another corpus, or on data encoded otherwise, never displaces it (a champion
registered before `encoded_md5` counts as other data; set the alias by hand for that:
MlflowClient().set_registered_model_alias). A run that is not trained registers nothing, so a
second `dvc repro` with nothing changed adds no version.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lyricist.tracking import store
from lyricist.tracking.inputs import ENCODED_TAG

ALIAS = "champion"
DATA_TAGS = ("data_md5", ENCODED_TAG)  # a version's data: what DVC hashed, what the run read


def register(tracking_uri: str, name: str, model_uri: str, model_id: str | None, run_id: str,
             val_ppl: float, report: Callable[[str], None] = print) -> int:
    """Register the run's logged model as a new version of `name`, moving the alias by the rule
    above; the version number."""
    client = MlflowClient(tracking_uri)
    run_tags = store.with_retry(lambda: client.get_run(run_id)).data.tags
    data = {tag: run_tags.get(tag, "unknown") for tag in DATA_TAGS}
    try:
        store.with_retry(lambda: client.create_registered_model(name))
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = store.with_retry(lambda: client.create_model_version(
        name, model_uri, run_id=run_id, model_id=model_id,
        tags={"val_ppl": repr(float(val_ppl)), **data})).version
    champion = _champion(client, name)
    differ = [tag for tag in DATA_TAGS if champion and champion.tags.get(tag) != data[tag]]
    if champion is None:
        moved, why = True, _no_champion(client, name, version)
    elif differ:
        moved, why = False, f"version {champion.version} was trained on other data ({', '.join(differ)})"
    else:
        best = _val_ppl(client, champion)
        moved = val_ppl < best
        why = f"val ppl {val_ppl:.2f} {'<' if moved else '>='} version {champion.version}'s {best:.2f}"
    if moved:
        store.with_retry(lambda: client.set_registered_model_alias(name, ALIAS, version))
    report(f"registered {name} version {version}: {ALIAS} {'is now this version' if moved else 'stays'} ({why})")
    return int(version)


def _champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:  # no alias yet
        return None


def _no_champion(client: MlflowClient, name: str, version: str) -> str:
    """Why a version takes a free alias: the first, or none of the versions left holds it."""
    others = sorted(int(v.version) for v in store.with_retry(lambda: client.search_model_versions(f"name='{name}'"))
                    if v.version != version)
    return ("the first" if not others else f"no version held it (its version deleted, or the alias removed); earlier "
            f"versions {', '.join(map(str, others))} remain: MlflowClient().set_registered_model_alias picks another")


def _val_ppl(client: MlflowClient, version) -> float:
    """The version's val perplexity: its tag, else its run's best/val_ppl (a version registered
    by hand); -inf for neither, so a champion set by hand without a score stays."""
    if "val_ppl" in version.tags:
        return float(version.tags["val_ppl"])
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    return metrics.get("best/val_ppl", -math.inf)
