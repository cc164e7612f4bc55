#!/usr/bin/env bash
# The whole project on a synthetic OCT cohort, through the real bundle command line:
#   1. generate the labelled cohort (NIfTI + DICOM, datalist) -> $OUT/cohort
#      and an unlabelled pretraining cohort (other seed)      -> $OUT/unlabelled
#   2. V-JEPA pretraining on the unlabelled cohort             -> $OUT/pretrain
#   3. embeddings of every volume at full depth, pretrained    -> $OUT/embeddings
#      and random-init encoder (kNN, RankMe, CKA in the summary) -> $OUT/embeddings_random
#   4. MAISI stacked encode / decode / reconstruction quality  -> $OUT/maisi
#   5. disease classification: pretrained vs random encoder    -> $OUT/classification_{pretrained,random}
#   6. layer segmentation: pretrained vs random encoder, and a -> $OUT/segmentation_{pretrained,random}
#      supervised MONAI UNet baseline (no pretraining)         -> $OUT/segmentation_unet
#   7. latent diffusion: autoencoder, U-Net, samples, Frechet  -> $OUT/latent_diffusion
#      and the trained autoencoder's reconstruction quality    -> $OUT/maisi/eval_trained
#   8. depth-subsampling ablation: pretraining at d_target 4/8/16, -> $OUT/ablation
#      the same linear probe at full depth
# The summary ($OUT/summary.md) ends with one table per task, the collapse monitor, kNN / RankMe / CKA, and the
# plots: $OUT/segmentation_overlay.png, $OUT/ablation/metric_vs_d_target.png, $OUT/maisi/eval_trained grids.
# Sizes are set for a 2-core CPU (about 15 minutes on an idle machine). As a foundation model is used, the encoder
# is pretrained on unlabelled volumes (UNLABELLED cases of another seed, labels unused; 0 pretrains on the
# labelled training split) and the downstream heads see few labels: the labelled cohort is split 40/10/50, so the
# pretrained-vs-random comparison is scored on half the cases (36 of 72), with paired bootstrap intervals.
# Pretraining uses V-JEPA 2.1's dense loss and V-JEPA's EMA 0.998: the least collapsed setting found
# (docs/scientific_check.md, round 4).
# Knobs: OUT, CASES, SPLIT, UNLABELLED, LESION_SCALE (1: focal lesions; see docs/scientific_check.md),
# PRETRAIN_EPOCHS, PROBE_EPOCHS, SEG_EPOCHS, AE_EPOCHS, ABLATION (0 skips step 8),
# ABLATION_D_TARGETS, ABLATION_EPOCHS.
# Results are never overwritten: a second run reuses finished steps (delete $OUT to start again).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
OUT="$(realpath -m "${OUT:-demo_output}")"
CASES="${CASES:-72}"
SPLIT="${SPLIT:-0.4 0.1 0.5}"
LESION_SCALE="${LESION_SCALE:-1}"
UNLABELLED="${UNLABELLED:-480}"
if [ "$UNLABELLED" -gt 0 ]; then
  PRETRAIN_DATA="$OUT/unlabelled"; PRETRAIN_EPOCHS="${PRETRAIN_EPOCHS:-5}"; PRETRAIN_OPTS=(--warmup_epochs 1 --learning_rate 0.0005)
else
  PRETRAIN_DATA="$OUT/cohort"; PRETRAIN_EPOCHS="${PRETRAIN_EPOCHS:-12}"; PRETRAIN_OPTS=(--warmup_epochs 2 --learning_rate 0.001)
fi
PROBE_EPOCHS="${PROBE_EPOCHS:-15}"
AE_EPOCHS="${AE_EPOCHS:-10}"
ABLATION="${ABLATION:-1}"
ABLATION_D_TARGETS="${ABLATION_D_TARGETS:-4 8 16}"
ABLATION_EPOCHS="${ABLATION_EPOCHS:-3}"
SEG_EPOCHS="${SEG_EPOCHS:-10}"  # 3 left the head unconverged (docs/scientific_check.md, "Layer segmentation head")
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
B="$ROOT/bundles"
# The encoder shape is given once, to pretraining; models/model.json beside the weights records it, and steps 3-6
# build the encoder from that file (no shape flags).
NET=(--image_size "[64, 64]" --d_target 16 --patch_size 16 --tubelet_size 2 --embed_dim 96 --depth 4 --num_heads 4)
PRED=(--predictor_embed_dim 64 --predictor_depth 2 --predictor_num_heads 4)
MAISI=(--num_channels "[16, 16, 32]" --num_res_blocks "[1, 1, 1]" --norm_num_groups 8)
DEV=(--device "\$torch.device('cpu')")
COMMON=(--num_workers 0 "${DEV[@]}")  # training and evaluation; the batch-inference bundles take DEV only
# Training steps whose model is missing continue an interrupted run of the same settings (or start fresh).
RESUME=(--resume latest)
PY="$VPY"
run() { echo; echo "=== $1"; shift; echo "+ $*" | cut -c1-400; ( cd "$ROOT" && "$@" ); }
mkdir -p "$OUT"

# 1. Synthetic cohort
if [ ! -f "$OUT/cohort/datalist.json" ]; then
  run "1/8 synthetic OCT cohort ($CASES cases, 2 devices, 3 classes)" \
    "$PY" -m oct_foundation.data.synthetic --out "$OUT/cohort" --cases "$CASES" --seed 0 --size small --dicom \
      --split $SPLIT --lesion-scale "$LESION_SCALE"
else echo "=== 1/8 cohort exists: $OUT/cohort"; fi
if [ "$UNLABELLED" -gt 0 ] && [ ! -f "$OUT/unlabelled/datalist.json" ]; then
  run "1/8 unlabelled pretraining cohort ($UNLABELLED cases, another seed; labels unused)" \
    "$PY" -m oct_foundation.data.synthetic --out "$OUT/unlabelled" --cases "$UNLABELLED" --seed 1 --size small \
      --split 1 0 0 --lesion-scale "$LESION_SCALE"
fi

# 2. Pretraining
if [ ! -f "$OUT/pretrain/models/model.pt" ]; then
  run "2/8 V-JEPA pretraining on $PRETRAIN_DATA ($PRETRAIN_EPOCHS epochs)" \
    "$PY" -m monai.bundle run training --config_file "$B/oct_vjepa_pretrain/configs/train.json" \
      --dataset_dir "$PRETRAIN_DATA" --bundle_root "$OUT/pretrain" --logging_file "$B/oct_vjepa_pretrain/configs/logging.conf" \
      "${NET[@]}" "${PRED[@]}" "${COMMON[@]}" --d_full 32 --num_epochs "$PRETRAIN_EPOCHS" "${PRETRAIN_OPTS[@]}" \
      --batch_size 4 --log_interval 20 --cache_rate 1.0 --ema_start 0.998 --dense_loss true "${RESUME[@]}"
else echo "=== 2/8 pretrained model exists: $OUT/pretrain/models/model.pt"; fi

# 3. Embeddings (collaborator-style inference on a folder of NIfTI files)
run "3/8 embeddings at full depth" \
  "$PY" -m monai.bundle run --config_file "$B/oct_vjepa_pretrain/configs/inference.json" \
    --logging_file "$B/oct_vjepa_pretrain/configs/logging.conf" \
    --input_dir "$OUT/cohort/images" --output_dir "$OUT/embeddings" --model_path "$OUT/pretrain/models/model.pt" "${DEV[@]}"
# the same encoder shape with no weights (--model_path ""): the reference for kNN, RankMe and CKA in the summary
run "3/8 embeddings at full depth, random-init encoder of the same shape" \
  "$PY" -m monai.bundle run --config_file "$B/oct_vjepa_pretrain/configs/inference.json" \
    --logging_file "$B/oct_vjepa_pretrain/configs/logging.conf" \
    --input_dir "$OUT/cohort/images" --output_dir "$OUT/embeddings_random" \
    --architecture_file "$OUT/pretrain/models/model.pt" --model_path "" "${DEV[@]}"

# 4. MAISI stacked video VAE (small random-init autoencoder: the real weights are licensed separately)
run "4/8 MAISI stacked encode (random-init small autoencoder; see bundles/oct_maisi_vae_encode/docs)" \
  "$PY" -m monai.bundle run --config_file "$B/oct_maisi_vae_encode/configs/inference.json" \
    --logging_file "$B/oct_maisi_vae_encode/configs/logging.conf" \
    --input_dir "$OUT/cohort/dicom" --output_dir "$OUT/maisi/latents" --allow_random_init true \
    "${MAISI[@]}" "${DEV[@]}"
MAISI_EVAL="['$B/oct_maisi_vae_encode/configs/inference.json','$B/oct_maisi_vae_encode/configs/evaluate.json']"
run "4/8 MAISI reconstruction quality, random-init autoencoder (the reference; test split)" \
  "$PY" -m monai.bundle run --config_file "$MAISI_EVAL" --logging_file "$B/oct_maisi_vae_encode/configs/logging.conf" \
    --datalist "$OUT/cohort/datalist.json" --output_dir "$OUT/maisi/eval" --allow_random_init true \
    "${MAISI[@]}" "${DEV[@]}"

# 5-6. Downstream: the same head, data and seed on the frozen pretrained encoder and on a random encoder of the
# same shape; training on the training split, evaluation on the test split at full depth.
downstream() {  # STEP BUNDLE OUTPUT_PREFIX WHAT EPOCHS [extra training overrides...]
  local step="$1" bundle="$2" prefix="$3" what="$4" epochs="$5"; shift 5
  local cfg="$B/$bundle/configs" src d enc
  for src in pretrained random; do
    if [ "$src" = pretrained ]; then enc=(--encoder_source model_pt --encoder_path "$OUT/pretrain/models/model.pt");
    else enc=(--encoder_source random --encoder_path "$OUT/pretrain/models/model.pt"); fi  # same shape, random weights
    d="$OUT/${prefix}_$src"
    if [ ! -f "$d/models/model.pt" ]; then
      run "$step $what, frozen $src encoder ($epochs epochs)" \
        "$PY" -m monai.bundle run training --config_file "$cfg/train.json" --logging_file "$cfg/logging.conf" \
          --dataset_dir "$OUT/cohort" --bundle_root "$d" "${enc[@]}" "${COMMON[@]}" \
          --num_epochs "$epochs" --seed 0 "${RESUME[@]}" "$@"
    fi
    run "$step $what: evaluation on the test split, $src encoder" \
      "$PY" -m monai.bundle run evaluating --config_file "['$cfg/train.json','$cfg/evaluate.json']" \
        --logging_file "$cfg/logging.conf" --dataset_dir "$OUT/cohort" --bundle_root "$d" "${COMMON[@]}"
  done
}
downstream 5/8 oct_disease_classification classification "disease classification linear probe" "$PROBE_EPOCHS" \
  --learning_rate 0.01
downstream 6/8 oct_layer_segmentation segmentation "layer segmentation head" "$SEG_EPOCHS"
# 6. The supervised baseline: MONAI's UNet (no pretraining) trained by the same bundle on the same split, epochs
# and seed, scored the same way (full depth, native in-plane grid) -> $OUT/segmentation_unet
SEG="$B/oct_layer_segmentation/configs"
# its shape is given once, to training; models/model.json records it for evaluation and inference
SEG_GEOM=(--model unet --image_size "[64, 64]" --d_target 16)
if [ ! -f "$OUT/segmentation_unet/models/model.pt" ]; then
  run "6/8 layer segmentation: MONAI UNet baseline, no pretraining ($SEG_EPOCHS epochs)" \
    "$PY" -m monai.bundle run training --config_file "$SEG/train.json" --logging_file "$SEG/logging.conf" \
      --dataset_dir "$OUT/cohort" --bundle_root "$OUT/segmentation_unet" --encoder_source random "${SEG_GEOM[@]}" \
      "${COMMON[@]}" --num_epochs "$SEG_EPOCHS" --seed 0 "${RESUME[@]}"
fi
run "6/8 layer segmentation: evaluation on the test split, UNet baseline" \
  "$PY" -m monai.bundle run evaluating --config_file "['$SEG/train.json','$SEG/evaluate.json']" \
    --logging_file "$SEG/logging.conf" --dataset_dir "$OUT/cohort" --bundle_root "$OUT/segmentation_unet" \
    "${COMMON[@]}"
# 6. Label maps of the test split from each segmentation model, as a collaborator runs inference (the summary draws
# one B-scan of them: $OUT/segmentation_overlay.png)
for src in pretrained random unet; do
  run "6/8 layer segmentation inference on the test split, $src" \
    "$PY" -m monai.bundle run --config_file "$SEG/inference.json" --logging_file "$SEG/logging.conf" \
      --datalist "$OUT/cohort/datalist.json" --dataset_dir "$OUT/cohort" \
      --model_path "$OUT/segmentation_$src/models/model.pt" --output_dir "$OUT/segmentation_$src/predictions" \
      "${DEV[@]}"
done

# 7. Latent diffusion on stacked latents (small autoencoder and U-Net, a few epochs: shows the workflow)
D="$OUT/latent_diffusion"
LD="$B/oct_latent_diffusion/configs"
# the autoencoder's keys go to every step; the U-Net's only to the configs that build one (unknown keys are refused)
AENET=(--num_channels "[16, 16, 32]" --num_res_blocks "[1, 1, 1]" --norm_num_groups 8 --num_frames 8
       --image_size "[64, 64]")
LDNET=("${AENET[@]}" --unet_channels "[32, 32]" --unet_attention_levels "[false, false]"
       --unet_num_head_channels "[8, 8]" --unet_num_res_blocks 1 --unet_norm_num_groups 8)
if [ ! -f "$D/models/autoencoder.pt" ]; then
  run "7/8 MAISI-architecture autoencoder training ($AE_EPOCHS epochs)" \
    "$PY" -m monai.bundle run training --config_file "$LD/train_autoencoder.json" --logging_file "$LD/logging.conf" \
      --dataset_dir "$OUT/cohort" --bundle_root "$D" "${AENET[@]}" "${COMMON[@]}" --batch_size 2 \
      --num_epochs "$AE_EPOCHS" --learning_rate 0.001 "${RESUME[@]}"
fi
run "7/8 MAISI reconstruction quality, the autoencoder just trained (test split, held out from its training)" \
  "$PY" -m monai.bundle run --config_file "$MAISI_EVAL" --logging_file "$B/oct_maisi_vae_encode/configs/logging.conf" \
    --datalist "$OUT/cohort/datalist.json" --output_dir "$OUT/maisi/eval_trained" \
    --weights_path "$D/models/autoencoder.pt" "${MAISI[@]}" "${DEV[@]}"
if [ ! -f "$D/models/model.pt" ]; then
  run "7/8 latent diffusion U-Net training (2 epochs, rectified flow)" \
    "$PY" -m monai.bundle run training --config_file "['$LD/inference.json','$LD/train_diffusion.json']" \
      --logging_file "$LD/logging.conf" --dataset_dir "$OUT/cohort" --bundle_root "$D" \
      --autoencoder_path "$D/models/autoencoder.pt" "${LDNET[@]}" "${COMMON[@]}" --batch_size 2 --num_epochs 2 \
      "${RESUME[@]}"
fi
run "7/8 sampling: latents -> decoded [T, H, W] NIfTI + PNG grid" \
  "$PY" -m monai.bundle run sampling --config_file "$LD/inference.json" --logging_file "$LD/logging.conf" \
    --dataset_dir "$OUT/cohort" --bundle_root "$D" --autoencoder_path "$D/models/autoencoder.pt" \
    --output_dir "$D/samples" --num_samples 4 --num_inference_steps 10 "${LDNET[@]}" "${DEV[@]}"

# 8. Depth-subsampling ablation (ABLATION=0 skips it): one encoder pretrained per d_target (uniform subsampling,
# tokens per optimizer step equalised, masks rescaled to the full depth), each scored by the same linear probe on
# the test split at full depth -> $OUT/ablation (results.md, metric_vs_d_target.png, pretrain_convergence.png)
if [ "$ABLATION" != 0 ]; then
  run "8/8 depth-subsampling ablation (d_target $ABLATION_D_TARGETS, uniform, $ABLATION_EPOCHS pretraining epochs each)" \
    "$PY" scripts/ablate_depth.py --preset smoke --out "$OUT/ablation" --dataset-dir "$OUT/cohort" \
      --tasks classification --eval-split test --d-full 32 --d-targets $ABLATION_D_TARGETS --strategies uniform \
      --pretrain-epochs "$ABLATION_EPOCHS" --downstream-epochs "$PROBE_EPOCHS" \
      --set "image_size=[64, 64]" --set patch_size=16 --set tubelet_size=2 --set embed_dim=96 --set depth=4 \
      --set num_heads=4 --set device=cpu --set num_workers=0 \
      --pretrain-set "dataset_dir=$PRETRAIN_DATA" --pretrain-set batch_size=4 --pretrain-set predictor_embed_dim=64 \
      --pretrain-set predictor_depth=2 --pretrain-set predictor_num_heads=4 --pretrain-set cache_rate=1.0 \
      --pretrain-set "learning_rate=${PRETRAIN_OPTS[3]}" --pretrain-set "warmup_epochs=${PRETRAIN_OPTS[1]}" \
      --pretrain-set ema_start=0.998 --pretrain-set dense_loss=true \
      --classification-set learning_rate=0.01 --classification-set batch_size=4
fi

"$PY" -m oct_foundation.experiments.demo_summary "$OUT"
