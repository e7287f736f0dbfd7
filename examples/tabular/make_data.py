"""Write the tabular example's data: scikit-learn's wine table (178 wines, 13 chemical measurements,
three cultivars) as ``data/wine.csv``, the kind of file a user brings. Nothing is downloaded.

    python make_data.py      # then: dvc repro (or, from the project root: make example-tabular)
"""

from pathlib import Path

from sklearn.datasets import load_wine

HERE = Path(__file__).resolve().parent


def main() -> None:
    wine = load_wine(as_frame=True)
    table = wine.frame.rename(columns={"target": "cultivar"})
    table["cultivar"] = table["cultivar"].map(dict(enumerate(["barolo", "grignolino", "barbera"])))  # text classes
    out = HERE / "data" / "wine.csv"
    out.parent.mkdir(exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6g")
    print(f"wrote {out.relative_to(HERE)}: {len(table)} rows, {table.shape[1] - 1} features, target 'cultivar'")


if __name__ == "__main__":
    main()
