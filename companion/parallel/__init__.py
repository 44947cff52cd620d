"""Parallel training on torch.distributed.

Launch a world, wrap a model, check it against one process. Introduced in chapter 9.

- launch: `launch(fn, world_size, *args)` (spawned gloo world, per-rank logs),
  `setup()`/`teardown()` under torchrun.
- wrap: `wrap_model(model, strategy, env)` and `shard_batch`, the two hooks a training loop needs.
- tensor: Megatron's column/row MLP split; pipeline: GPT stages, timings, bubble; comm:
  what each strategy sends.
- ddp, zero: data parallelism and ZeRO-1 by hand (`HookedDDP`, `BucketedDDP`, `Zero1Optimizer`),
  beside torch's; handbuilt: workers that compare them with torch's and with one process.
- verify: `verify(strategy)`, also `python -m companion.parallel --strategy ddp
  --world-size 2 --steps 5`.
"""
from .comm import CommRow, bytes_per_step, layout_memory, ring_allreduce_bytes
from .launch import DistEnv, LaunchResult, free_port, launch, setup, teardown
from .pipeline import (Event, GPTStage, TimedStage, bubble_fraction, measured_bubble, plot_bubble,
                       plot_timeline, stage_layers)
from .tensor import TensorParallelMLP, apply_tensor_parallel, copy_to_tp, reduce_from_tp, shard_rows
from .verify import (RunSpec, compare_losses, make_batches, pipeline_timings, tiny_config,
                     train_single, train_steps, verify)
from .wrap import (STRATEGIES, Parallel, clip_grad_norm, full_state_dict, shard_batch, state_bytes,
                   wrap_model)

__all__ = [
    "DistEnv", "LaunchResult", "free_port", "launch", "setup", "teardown", "STRATEGIES", "Parallel",
    "wrap_model", "shard_batch", "clip_grad_norm", "state_bytes", "full_state_dict",
    "TensorParallelMLP", "apply_tensor_parallel", "copy_to_tp", "reduce_from_tp", "shard_rows",
    "Event", "GPTStage", "TimedStage", "bubble_fraction", "measured_bubble", "plot_bubble",
    "plot_timeline", "stage_layers", "CommRow", "bytes_per_step", "layout_memory",
    "ring_allreduce_bytes", "RunSpec", "compare_losses", "make_batches", "pipeline_timings",
    "tiny_config", "train_single", "train_steps", "verify"]

# Chapter 9, second pass: sequence/context parallelism, pipeline schedules on paper, multi-node.
from .arith import ring_attention_traffic, ring_overlap_block, tp_activation_bytes
from .multinode import run_two_nodes, torchrun_command
from .ring import block_attention, merge_partials, ring_attention, ring_attention_worker
from .schedules import (Op, gpipe_schedule, interleaved_bubble, interleaved_schedule,
                        one_f_one_b_schedule, peak_in_flight, plot_schedules, simulate,
                        zero_bubble_fraction)

__all__ += [
    "tp_activation_bytes", "ring_attention_traffic", "ring_overlap_block", "torchrun_command",
    "run_two_nodes", "block_attention", "merge_partials", "ring_attention", "ring_attention_worker",
    "Op", "gpipe_schedule", "one_f_one_b_schedule", "interleaved_schedule", "simulate",
    "interleaved_bubble", "zero_bubble_fraction", "peak_in_flight", "plot_schedules"]

# Chapter 9, by hand: DDP from gradient hooks and buckets, ZeRO-1 over any torch.optim optimizer.
from .ddp import BucketedDDP, HookedDDP, bucket_assignment
from .handbuilt import ddp_worker, tied_model, zero_worker
from .zero import Zero1Optimizer, optimizer_state_bytes, partition_parameters

__all__ += ["HookedDDP", "BucketedDDP", "bucket_assignment", "Zero1Optimizer",
            "partition_parameters", "optimizer_state_bytes", "tied_model", "ddp_worker",
            "zero_worker"]
