"""Stage build_images: write the chapter 4 line images as PNG files in class subfolders."""

import _project  # noqa: F401  (first: the stages run the src/ next to them)
from stepbystep.data.layout import dataset_dir
from stepbystep.errors import run_stage


def main() -> None:
    from stepbystep.data.images import build_images
    from stepbystep.params import load_params

    params = load_params().build_images
    build_images(params, dataset_dir("images"))


if __name__ == "__main__":
    run_stage(main)
