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
