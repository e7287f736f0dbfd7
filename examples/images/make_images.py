"""Write the image-folder example's data: scikit-learn's 1,797 8x8 digits as PNG files in
torchvision's ImageFolder layout, ``data/digits/{train,test}/<digit>/<n>.png`` (a seeded, stratified
fifth as the fixed test set), the kind of folder a user brings. Nothing is downloaded.

    python make_images.py    # then: dvc repro (or, from the project root: make example-images)
"""

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent


def main() -> None:
    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255 / 16)), 0, 255).astype(np.uint8)
    train, test = train_test_split(np.arange(len(pixels)), test_size=0.2, stratify=digits.target, random_state=0)
    root = HERE / "data" / "digits"
    for split, rows in (("train", train), ("test", test)):
        for row in rows:
            folder = root / split / str(digits.target[row])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[row], mode="L").save(folder / f"{row:04d}.png")
    print(f"wrote {root.relative_to(HERE)}: {len(train)} training and {len(test)} test images, 10 classes")


if __name__ == "__main__":
    main()
