"""imgpt's plumbing: what the story files (model, data, loss, metrics, train, eval, sample) stand on, and what a
first-time reader may skip. It never imports a top-level file. One idea a module:

    cli            flags from dataclass configs (and config files), every value checked; one-line errors, exit 2
    files          atomic writes, downloads and the cache, checking an output directory before any work
    distributed    torchrun's process group, sums over ranks, one download per node, Ctrl-C between steps
    device         which device, its float modes, autocast, whether packed rows can use varlen; the FLOPs of a
                   step and the GPUs' peaks (MFU)
    pretrained     Hugging Face GPT-2 checkpoints: config.json and weights, checked against our shapes
    tokenizers     GPT-2's BPE and the byte tokenizer, and the record a checkpoint keeps of its tokenizer
    checkpoint     imgpt's training checkpoints: atomic, never non-finite, weights_only, checked on resume
    memory         the bytes a training step holds on a GPU, and the micro-batch that fits its free memory
    rundir         a run's out_dir: one run per directory, resume, the log, never overwriting a finished run
    train_config   every training setting with its help line, and the recipes that fill them
    batching       which examples go in each step, each rank's micro-batches, the next step's made ahead
    formats        instruction datasets on disk (Alpaca, Dolly, ShareGPT, ...) -> messages; which train, which
                   are held out
    synthetic      the built-in world: its fact-recall task, corpus, probe and questions
    benchmarks     multiple-choice benchmarks (MMLU, HellaSwag) scored as lm-evaluation-harness does
"""
