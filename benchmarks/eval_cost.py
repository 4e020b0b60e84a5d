"""What an evaluation during unlearning costs (`UnlearningEvaluationCallback`, SPEC section 7): the time of one
`evaluate_tofu` evaluation against the time of one unlearning step, on the demo's model.

    python benchmarks/eval_cost.py                 # the demo's settings: tiny Llama (2 layers, d=128), demo
                                                   # preset (forget10 = 40 questions), NPO, batch 8, 1 thread
    python benchmarks/eval_cost.py --repeats 5 --threads 2
    python benchmarks/eval_cost.py --preset study  # the study's data (forget10 = 200 questions, with a holdout)
    python benchmarks/eval_cost.py --preset study --model outputs/study/base/stages/models/finetuned+magnitude-70

One SAUTrainer run (NPO, plain masking on a 50%-magnitude-pruned model, the demo's 3 epochs = 15 steps) times its
steps from each step's start to its end (median; the first step is not counted). Then `evaluate_tofu` is timed on
the same model, `--repeats` times each (median), in the configurations a trajectory can use: no generation
(``max_new_tokens=0``: probabilities, truth ratios, forget quality, but a model utility of 0, since its ROUGE terms
need generated answers), 16 new tokens (the demo's answers are 8-15 words: some cut short), and the demo's 48.
Membership inference is off in those rows; a preset with a holdout split (``study``) adds a row with it on
(the attacks of `evaluate_tofu`, per-example gradient norms included), which ``unlearn.eval_membership_inference``
turns on in the pipeline's trajectories. The model is random: its greedy answers rarely
stop early, so the generating evaluations are upper bounds for a trained model.
The last columns: evaluations per run when evaluating every fifth of an epoch (one per step here, plus step 0) and
what they add to the run's training time.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--generate-tokens", type=int, default=48)
    ap.add_argument("--preset", default="demo", help="built-in benchmark preset (demo, study, ...)")
    ap.add_argument("--model", default=None, help="a saved model (and tokenizer) trained on that preset, e.g. a "
                    "pruned model of the study's output; default: a random tiny Llama, pruned 50% by magnitude")
    opts = ap.parse_args()

    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(opts.threads)
    from sau_trainer import SAUConfig, SAUTrainer, evaluate_tofu
    from sau_trainer.data.synthetic import generate_benchmark
    from sau_trainer.data.tokenizer import train_tokenizer
    from sau_trainer.modeling import build_llama
    from sau_trainer.pruning import prune_model

    bench = generate_benchmark(opts.preset, 0)
    texts = [t for rows in bench.values() for r in rows
             for t in (r["question"], r["answer"], *r.get("perturbed_answer", []), r.get("paraphrased_answer", ""))
             if t]
    if opts.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(opts.model)
        tok = AutoTokenizer.from_pretrained(opts.model)
    else:
        tok = train_tokenizer(texts, vocab_size=512)
        model = build_llama("tiny", tok, seed=0)
        prune_model(model, "magnitude", 0.5)
    qa = [{"question": r["question"], "answer": r["answer"]} for r in bench["forget10"]]
    retain = [{"question": r["question"], "answer": r["answer"]} for r in bench["retain90"]]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t)

    timer = StepTimer()
    args = SAUConfig(output_dir="/tmp/sau_eval_cost", report_to=[], objective="npo", sau=False, num_train_epochs=3,
                     per_device_train_batch_size=8, learning_rate=4e-4, lr_scheduler_type="constant",
                     save_strategy="no", logging_steps=1000, disable_tqdm=True, use_cpu=True, seed=0)
    trainer = SAUTrainer(model, args, forget_dataset=qa, retain_dataset=retain, processing_class=tok,
                         callbacks=[timer])
    trainer.train()
    step = statistics.median(timer.times[1:])
    steps = len(timer.times)

    rows = []
    configs = [("no generation (max_new_tokens=0; model_utility is then 0)", 0, False),
               ("16 new tokens", 16, False), (f"{opts.generate_tokens} new tokens", opts.generate_tokens, False)]
    if "holdout10" in bench:
        configs.append((f"{opts.generate_tokens} new tokens + membership inference", opts.generate_tokens, True))
    for label, tokens, mia in configs:
        times = []
        for _ in range(opts.repeats):
            t = time.perf_counter()
            evaluate_tofu(model, tok, bench, "forget10", batch_size=64, max_new_tokens=tokens,
                          membership_inference=mia, show_progress=False)
            times.append(time.perf_counter() - t)
        rows.append((label, statistics.median(times)))

    evals = steps + 1
    print(f"{opts.preset} preset, {opts.model or 'a random tiny model'}, {steps} NPO steps of batch 8, {opts.threads} thread(s); medians")
    print(f"| what | seconds | x one training step | per run ({evals} evaluations) | x the run's training |")
    print("|---|---|---|---|---|")
    print(f"| one training step | {step:.4f} | 1 | | |")
    for label, t in rows:
        print(f"| one evaluation, {label} | {t:.3f} | {t / step:.0f} | {evals * t:.1f} s | "
              f"{evals * t / (steps * step):.0f} |")


if __name__ == "__main__":
    main()
