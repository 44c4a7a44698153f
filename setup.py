from setuptools import find_packages, setup

setup(
    name="nmt-sd",
    version="0.1.0",
    description="fairseq-style Transformer NMT toolkit for self-distillation research",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nmt_sd", "nmt_sd.*", "data_prep", "data_prep.*"]),
    install_requires=[
        "torch==2.13.0",
        "numpy",
        "sentencepiece",
        "sacrebleu>=2.0",
    ],
    extras_require={
        "test": ["pytest", "matplotlib", "black==26.10.1", "ruff==0.17.6"],
        "plots": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "nmt-sd-preprocess = nmt_sd.cli.preprocess:cli_main",
            "nmt-sd-train = nmt_sd.cli.train:cli_main",
            "nmt-sd-generate = nmt_sd.cli.generate:cli_main",
            "nmt-sd-interactive = nmt_sd.cli.interactive:cli_main",
            "nmt-sd-score = nmt_sd.cli.score:cli_main",
            "nmt-sd-average-checkpoints = nmt_sd.cli.average_checkpoints:cli_main",
            "nmt-sd-seqkd = nmt_sd.cli.seqkd:cli_main",
            "nmt-sd-ablate = nmt_sd.cli.ablate:cli_main",
        ]
    },
)
