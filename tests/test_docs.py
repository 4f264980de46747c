"""The README's loss table matches the registry."""

from pathlib import Path

from iterpo.losses import LOSSES, list_losses, loss_hyperparameters

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_loss_table_lists_every_loss_with_its_data_and_hyperparameters():
    rows = {line.split("|")[1].strip().strip("`"): line for line in README.splitlines() if line.startswith("| `")}
    for name in list_losses():
        assert name in rows, f"README loss table lacks {name}"
        row = rows[name]
        assert f"| {LOSSES.get(name).data_shape} |" in row, name
        for hp in loss_hyperparameters(name):
            assert f"{hp}=" in row, f"README row for {name} lacks {hp}"


def _section(title: str) -> str:
    start = README.index(title)
    return README[start : README.index("\n## ", start + 1)]


def test_readme_documents_every_judge_strategy_task_and_recipe():
    from iterpo.judges import JUDGES
    from iterpo.pairing import PAIRING
    from iterpo.tasks import TASKS

    text = _section("## Judges, pairing strategies and tasks")
    shipped = [n for n in JUDGES.names() if JUDGES.get(n).__module__ != "toy_judges"]  # not the tests' own judges
    for name in shipped + PAIRING.names() + TASKS.names():
        assert f"| `{name}` |" in text, f"README lacks a row for {name}"
    # every shipped config is documented: the recipes in this section's table, the variants elsewhere
    for path in sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")):
        assert f"configs/{path.name}" in README, path.name
    assert "configs/grpo.yaml" in text and "configs/egpo.yaml" in text
