"""Planning a run before it runs: per-device memory of a target (plan.py) and of a drafter in training
(plan_drafter.py) on any mesh from abstract shapes, and the drafter training step compiled ahead of time for a mesh
of fake devices (distill_aot.py) to check the planner against XLA's memory_analysis().

Above the libraries it sizes: planning imports the model, the drafters and training (the optimizer, the train step
builder); nothing below imports planning. The sharding primitives it sizes through are dsv4.parallel's."""
