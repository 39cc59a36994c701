"""imgpt's plumbing: what the story files (model, data, loss, metrics, train, eval, sample) stand on, and what a
first-time reader may skip. It never imports a top-level file. One job a module:

    cli            flags from dataclass configs (and config files), every value checked; one-line errors, exit 2
    files          atomic writes, downloads and the cache, checking an output directory before any work
    distributed    torchrun's process group, sums over ranks, one download per node, Ctrl-C between steps
    device         which device, its float modes, the autocast dtype, whether packed rows can use varlen
    gpt_config     GPT-2's sizes: the model config and the released presets
    pretrained     Hugging Face GPT-2 checkpoints: config.json and weights, checked against our shapes
    tokenizers     GPT-2's BPE and the byte tokenizer, and the record a checkpoint keeps of its tokenizer
    checkpoint     imgpt's training checkpoints: atomic, never non-finite, weights_only, checked on resume
    rundir         a run's out_dir: one run per directory, resume, the log, never overwriting a finished run
    train_config   every training setting with its help line, and the recipes that fill them
    schedule       the learning rate at each step
    batching       which examples go in each step, and each rank's micro-batches
    prefetch       the next step's batches, made in a background thread
    splits         which conversations train and which are held out
    formats        instruction datasets on disk (Alpaca, Dolly, ShareGPT, ...) -> messages
    synthetic      the built-in world: its fact-recall task, corpus, probe and questions
    sampling       logits -> the next token (greedy, temperature, top-k, top-p)
    text_metrics   exact match, BLEU, ROUGE-L of generated text
    benchmarks     multiple-choice benchmarks (MMLU, HellaSwag) scored as lm-evaluation-harness does
    mfu            the FLOPs of a training step and the GPUs' peaks
    tokenviz       an example's tokens marked by their loss weight (`python data.py show`)
    train_report   what train.py prints before and after a run
"""
