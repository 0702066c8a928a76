//! Training with a backward pass block by block. candle keeps a forward's whole autograd graph, every
//! activation in it, until one `backward` over all of it ends; PyTorch frees each saved tensor as soon as
//! its backward used it. Here the forward runs as a chain of segments (the ViT's patch embedding, each of
//! its transformer layers and its final norm, each encoder and decoder block of UNETR, the head), each on
//! its own graph from detached inputs (the residual blocks on a hand-written tape instead of a graph, see
//! `unetr_decoder::tape`); the backward then runs segment by
//! segment from the loss down, each segment's graph (its activations) dropped once its backward is done,
//! and the gradients of its inputs handed to the segments that made them.
//!
//! The same seam gives activation checkpointing: a checkpointed segment keeps only its inputs during the
//! forward and recomputes its activations just before its backward (dropout masks replayed).

use crate::error::Result;
use crate::unetr::{Decoder, Unetr};
use unetr_decoder::tape::{accumulate, detached, OutTape, ResTape, UpTape};
use unetr_decoder::{ConvBlock, UnetOutBlock, UnetResBlock, UnetrBasicBlock, UnetrUpBlock};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// Which segments recompute their activations in the backward instead of keeping them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpointing {
    /// Keep everything (the backward still frees each segment's activations once used).
    #[default]
    None,
    /// Recompute the ViT's.
    Vit,
    /// Recompute the CNN decoder's blocks'.
    Decoder,
    /// Recompute every segment's.
    All,
}

impl Checkpointing {
    fn vit(self) -> bool {
        matches!(self, Self::Vit | Self::All)
    }
    fn decoder(self) -> bool {
        matches!(self, Self::Decoder | Self::All)
    }
}

type Run<'a> = Box<dyn Fn(&[Tensor]) -> candle_core::Result<Vec<Tensor>> + 'a>;

/// One segment: its inputs as fresh variables (the gradients arrive there), and its outputs' graph unless it
/// recomputes them.
struct Segment<'a> {
    inputs: Vec<Var>,
    outputs: Option<Vec<Tensor>>,
    run: Run<'a>,
    /// Called before a recomputation (replays the dropout masks).
    before_recompute: Option<Box<dyn Fn() + 'a>>,
}

impl<'a> Segment<'a> {
    /// Runs `run` on copies of `inputs`; returns the segment and its outputs detached (the next segments'
    /// inputs).
    fn new(inputs: &[&Tensor], run: Run<'a>, recompute: bool, before_recompute: Option<Box<dyn Fn() + 'a>>) -> Result<(Self, Vec<Tensor>)> {
        let inputs: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.detach())).collect::<candle_core::Result<_>>()?;
        let ins: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let outs = run(&ins)?;
        let detached = outs.iter().map(Tensor::detach).collect();
        Ok((Self { inputs, outputs: (!recompute).then_some(outs), run, before_recompute }, detached))
    }

    /// The backward of the segment given its outputs' gradients: parameter gradients are added into
    /// `grads` (for `params`), and the inputs' gradients returned. The segment's graph is dropped.
    /// The gradients are taken by value: each is dropped as soon as it was used.
    fn backward(self, out_grads: Vec<Option<Tensor>>, params: &[Var], grads: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let outs = match self.outputs {
            Some(o) => o,
            None => {
                if let Some(f) = &self.before_recompute {
                    f();
                }
                let ins: Vec<Tensor> = self.inputs.iter().map(|v| v.as_tensor().clone()).collect();
                (self.run)(&ins)?
            }
        };
        // One backward over the segment's graph, each output seeded with its gradient.
        let seeds = outs.iter().zip(out_grads).map(|(o, g)| g.map(|g| unetr_ops::seed(o, &g)).transpose()).collect::<candle_core::Result<Vec<_>>>()?;
        let Some(seed) = sum_present(seeds.iter())? else { return Ok(vec![None; self.inputs.len()]) };
        let g = seed.backward()?;
        drop((outs, seed));
        for p in params {
            if let Some(pg) = g.get(p.as_tensor()) {
                accumulate(grads, p.as_tensor(), pg.detach())?;
            }
        }
        // Detached: a gradient computed by an op's backward may still carry that op's graph (and through
        // it reach this segment's parameters again).
        Ok(self.inputs.iter().map(|v| g.get(v.as_tensor()).map(Tensor::detach)).collect())
    }
}

/// A block that runs the hand-written training pass (`unetr_decoder::tape`) instead of candle's graph.
#[derive(Clone, Copy)]
enum TapedBlock<'a> {
    Res(&'a UnetResBlock),
    Up(&'a UnetrUpBlock),
    Out(&'a UnetOutBlock),
}

enum Tape {
    Res(ResTape),
    Up(UpTape),
    Out(OutTape),
}

impl Tape {
    fn with_output(self, out: Tensor) -> Self {
        match self {
            Self::Res(t) => Self::Res(t.with_output(out)),
            Self::Up(t) => Self::Up(t.with_output(out)),
            Self::Out(t) => Self::Out(t),
        }
    }
}

impl TapedBlock<'_> {
    /// Its number of inputs.
    fn arity(self) -> usize {
        match self {
            Self::Res(_) | Self::Out(_) => 1,
            Self::Up(_) => 2,
        }
    }
    /// The forward on `ins`, which it consumes (an up block drops its skip input once concatenated).
    fn forward(self, ins: Vec<Tensor>) -> candle_core::Result<(Tensor, Tape)> {
        Ok(match self {
            Self::Res(b) => {
                let (o, t) = b.forward_taped(&ins[0])?;
                (o, Tape::Res(t))
            }
            Self::Up(b) => {
                let [x, skip]: [Tensor; 2] = ins.try_into().map_err(|_| candle_core::Error::Msg("an up block takes two inputs".into()))?;
                let (o, t) = b.forward_taped(&x, skip)?;
                (o, Tape::Up(t))
            }
            Self::Out(b) => {
                let (o, t) = b.forward_taped(&ins[0])?;
                (o, Tape::Out(t))
            }
        })
    }
}

/// A taped segment: its tape, or (recomputing) its inputs.
struct Taped<'a> {
    block: TapedBlock<'a>,
    inputs: Vec<Tensor>,
    tape: Option<Tape>,
}

impl Taped<'_> {
    fn backward(self, out_grads: Vec<Option<Tensor>>, grads: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let Some(g) = out_grads.into_iter().next().flatten() else { return Ok(vec![None; self.block.arity()]) };
        // A recomputation consumes the inputs (a kept tape had no use for them).
        let tape = match self.tape {
            Some(t) => t,
            None => {
                let (out, t) = self.block.forward(self.inputs)?;
                t.with_output(out)
            }
        };
        Ok(match (tape, self.block) {
            (Tape::Res(t), TapedBlock::Res(b)) => vec![Some(t.backward(b, g, grads)?)],
            (Tape::Up(t), TapedBlock::Up(b)) => {
                let (gx, gskip) = t.backward(b, g, grads)?;
                vec![Some(gx), Some(gskip)]
            }
            (Tape::Out(t), TapedBlock::Out(b)) => vec![Some(t.backward(b, g, grads)?)],
            _ => return Err(candle_core::Error::Msg("a segment's tape does not match its block".into()).into()),
        })
    }
}

/// A segment on candle's graph or on a tape.
enum Seg<'a> {
    Graph(Segment<'a>),
    Taped(Taped<'a>),
}

impl Seg<'_> {
    /// See [`Segment::backward`]: the gradients are taken by value.
    fn backward(self, out_grads: Vec<Option<Tensor>>, params: &[Var], grads: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        match self {
            Self::Graph(s) => s.backward(out_grads, params, grads),
            Self::Taped(t) => t.backward(out_grads, grads),
        }
    }
}

/// A segment for `block` on `inputs`: taped where the block allows it, else on candle's graph (`run`).
fn segment<'a>(block: Option<TapedBlock<'a>>, inputs: &[&Tensor], run: Run<'a>, recompute: bool) -> Result<(Seg<'a>, Vec<Tensor>)> {
    let Some(block) = block else {
        let (s, o) = Segment::new(inputs, run, recompute, None)?;
        return Ok((Seg::Graph(s), o));
    };
    let ins: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
    let (out, tape) = block.forward(ins.clone())?;
    // The head's tape is its input: what a recomputation would keep anyway.
    let recompute = recompute && !matches!(block, TapedBlock::Out(_));
    let (inputs, tape) = if recompute { (ins, None) } else { (Vec::new(), Some(tape)) };
    Ok((Seg::Taped(Taped { block, inputs, tape }), vec![out]))
}

/// encoder1's segment (taped when its layer is a residual block the tape applies to).
fn basic<'a>(b: &'a UnetrBasicBlock, x: &Tensor, recompute: bool) -> Result<(Seg<'a>, Vec<Tensor>)> {
    let taped = match &b.layer {
        ConvBlock::Res(r) if r.tape_applies(x) => Some(TapedBlock::Res(r)),
        _ => None,
    };
    segment(taped, &[x], one(|t| b.forward_t(t, true)), recompute)
}

/// An up block's segment on (x, skip) (taped where the tape applies).
fn up_block<'a>(b: &'a UnetrUpBlock, x: &Tensor, skip: &Tensor, recompute: bool) -> Result<(Seg<'a>, Vec<Tensor>)> {
    let taped = b.tape_applies(x).then_some(TapedBlock::Up(b));
    segment(taped, &[x, skip], up(b), recompute)
}

/// The head's segment (taped when the tape applies).
fn out_block<'a>(b: &'a UnetOutBlock, x: &Tensor, recompute: bool) -> Result<(Seg<'a>, Vec<Tensor>)> {
    let taped = b.tape_applies(x).then_some(TapedBlock::Out(b));
    segment(taped, &[x], one(|t| b.forward(t)), recompute)
}

/// A segment of one input and one output.
fn one<'a>(f: impl Fn(&Tensor) -> candle_core::Result<Tensor> + 'a) -> Run<'a> {
    Box::new(move |i: &[Tensor]| Ok(vec![f(&i[0])?]))
}

/// An up block's segment: inputs (x, skip).
fn up(b: &unetr_decoder::UnetrUpBlock) -> Run<'_> {
    Box::new(move |i: &[Tensor]| Ok(vec![b.forward_t(&i[0], i[1].clone(), true)?]))
}

/// The ViT as segments: the patch embedding, each transformer layer (those feeding a skip connection also
/// give their output as a grid) and the final norm (as a grid). Recomputation then holds one layer's graph
/// at a time.
struct ViTSegments<'a> {
    embed: Segment<'a>,
    /// Each layer's segment and whether it feeds a skip connection (a second output).
    layers: Vec<(Segment<'a>, bool)>,
    last: Segment<'a>,
}

impl<'a> ViTSegments<'a> {
    /// The segments and the four grids the decoder reads: the three skip levels and the final tokens.
    fn new(m: &'a Unetr, x: &Tensor, recompute: bool) -> Result<(Self, [Tensor; 4])> {
        let (cfg, vit) = (&m.cfg, &m.vit);
        let skips = cfg.skip_layers();
        let proj = move |t: &Tensor| -> candle_core::Result<Tensor> {
            let [a, b, c] = cfg.feat_size();
            t.reshape((t.dim(0)?, a, b, c, cfg.hidden_size))?.permute((0, 4, 1, 2, 3))?.contiguous()
        };
        // Each segment with dropout replays its masks from the generator's state before its forward.
        let replay = || -> Option<Box<dyn Fn() + 'a>> {
            let (rng, state) = (vit.dropout_rng.clone(), vit.dropout_rng.snapshot());
            Some(Box::new(move || rng.restore(&state)))
        };
        let (embed, mut h) = Segment::new(&[x], one(|t| vit.patch_embedding.forward_t(t, true)), recompute, replay())?;
        // The skip layers are distinct and ascending (the config asks for 4 layers or more), so the grids
        // come out in the decoder's order.
        let mut grids = Vec::with_capacity(4);
        let mut layers = Vec::with_capacity(vit.blocks.len());
        for (i, blk) in vit.blocks.iter().enumerate() {
            let skip = skips.contains(&i);
            let run: Run<'a> = Box::new(move |ins: &[Tensor]| {
                let o = blk.forward_t(&ins[0], true)?;
                Ok(if skip { vec![proj(&o)?, o] } else { vec![o] })
            });
            let (seg, mut outs) = Segment::new(&[&h[0]], run, recompute, replay())?;
            h = outs.split_off(outs.len() - 1);
            grids.extend(outs);
            layers.push((seg, skip));
        }
        let (last, g) = Segment::new(&[&h[0]], one(move |t| proj(&candle_core::Module::forward(&vit.norm, t)?)), recompute, None)?;
        grids.extend(g);
        let grids: [Tensor; 4] = grids.try_into().map_err(|g: Vec<Tensor>| candle_core::Error::Msg(format!("the ViT gave {} grids for the decoder, expected 4", g.len())))?;
        Ok((Self { embed, layers, last }, grids))
    }

    /// The backward from the four grids' gradients, last layer first.
    fn backward(self, [g2, g3, g4, g_last]: [Option<Tensor>; 4], params: &[Var], grads: &mut GradStore) -> Result<()> {
        let mut skip_grads = vec![g2, g3, g4];
        let mut g = self.last.backward(vec![g_last], params, grads)?.remove(0);
        for (seg, skip) in self.layers.into_iter().rev() {
            let outs = if skip { vec![skip_grads.pop().flatten(), g] } else { vec![g] };
            g = seg.backward(outs, params, grads)?.remove(0);
        }
        self.embed.backward(vec![g], params, grads)?;
        Ok(())
    }
}

/// The two input gradients of a two-input segment.
fn pair(g: Vec<Option<Tensor>>) -> [Option<Tensor>; 2] {
    let mut g = g.into_iter();
    [g.next().flatten(), g.next().flatten()]
}

/// The sum of the tensors present (None if none is).
fn sum_present<'t>(gs: impl Iterator<Item = &'t Option<Tensor>>) -> Result<Option<Tensor>> {
    let mut sum: Option<Tensor> = None;
    for g in gs.flatten() {
        sum = Some(match sum {
            None => g.clone(),
            Some(s) => (s + g)?,
        });
    }
    Ok(sum)
}

/// Names the part of the step that starts here, for a bench's memory attribution
/// (`unetr_ops::profile::memory_phase`; nothing unless a bench installed its probe).
fn phase(name: &'static str) {
    unetr_ops::profile::memory_phase(name);
}

/// What [`Unetr::forward_backward`] returns.
pub struct StepGrads {
    /// The loss as `loss_fn` returned it (the value to report).
    pub loss: Tensor,
    /// Gradients of the loss `loss_fn` returned for backward, for the given parameters.
    pub grads: GradStore,
}

impl Unetr {
    /// Forward, loss and backward of one training batch, segment by segment (see the module docs).
    /// `loss_fn(logits)` returns (the loss to report, the loss to differentiate: e.g. the same, scaled for
    /// f16). Gradients are returned for `params`. Decoders other than UNETR's run as one segment.
    pub fn forward_backward(&self, x: &Tensor, loss_fn: impl Fn(&Tensor) -> candle_core::Result<(Tensor, Tensor)>, params: &[Var], ck: Checkpointing) -> Result<StepGrads> {
        self.check_input(x)?;
        let Decoder::Unetr(d) = &self.decoder else {
            let (loss, scaled) = loss_fn(&self.forward_t(x, true)?)?;
            let g = scaled.backward()?;
            let mut grads = GradStore::default();
            for p in params {
                if let Some(pg) = g.get(p.as_tensor()) {
                    grads.insert(p.as_tensor(), pg.clone());
                }
            }
            return Ok(StepGrads { loss, grads });
        };
        let rng = &self.vit.dropout_rng;
        phase("vit forward");
        let (vit, v) = ViTSegments::new(self, x, ck.vit())?;
        // With recomputation the ViT's backward replays its layers' masks in reverse; the generator is put
        // back where the forward left it, as if nothing had been recomputed.
        let after_forward = rng.snapshot();
        let dck = ck.decoder();
        phase("encoder4 forward");
        let (enc4, e4) = Segment::new(&[&v[2]], one(|t| d.encoder4.forward_t(t, true)), dck, None)?;
        phase("decoder5 forward");
        let (dec5, o5) = up_block(&d.decoder5, &v[3], &e4[0], dck)?;
        drop(e4);
        phase("encoder3 forward");
        let (enc3, e3) = Segment::new(&[&v[1]], one(|t| d.encoder3.forward_t(t, true)), dck, None)?;
        phase("decoder4 forward");
        let (dec4, o4) = up_block(&d.decoder4, &o5[0], &e3[0], dck)?;
        drop((o5, e3));
        phase("encoder2 forward");
        let (enc2, e2) = Segment::new(&[&v[0]], one(|t| d.encoder2.forward_t(t, true)), dck, None)?;
        phase("decoder3 forward");
        let (dec3, o3) = up_block(&d.decoder3, &o4[0], &e2[0], dck)?;
        drop((o4, e2, v));
        phase("encoder1 forward");
        let (enc1, e1) = basic(&d.encoder1, x, dck)?;
        phase("decoder2 forward");
        let (dec2, o2) = up_block(&d.decoder2, &o3[0], &e1[0], dck)?;
        drop((o3, e1));
        phase("head forward");
        let (head, logits) = out_block(&d.out, &o2[0], dck)?;
        drop(o2);
        // The loss on its own graph from the logits.
        phase("loss");
        let lv = Var::from_tensor(&logits[0])?;
        drop(logits);
        let (loss, scaled) = loss_fn(lv.as_tensor())?;
        let lg = scaled.backward()?;
        // The value only: the loss's graph holds the logits and the loss's own intermediates.
        let loss = detached(loss);
        let mut grads = GradStore::default();
        let g_logits = lg.get(lv.as_tensor()).map(Tensor::detach);
        drop((lg, scaled, lv));
        // Backward, segment by segment; each gradient is moved on, so none outlives its use.
        phase("head backward");
        let g_o2 = head.backward(vec![g_logits], params, &mut grads)?;
        phase("decoder2 backward");
        let [g_o3, g_e1] = pair(dec2.backward(g_o2, params, &mut grads)?);
        phase("encoder1 backward");
        enc1.backward(vec![g_e1], params, &mut grads)?;
        phase("decoder3 backward");
        let [g_o4, g_e2] = pair(dec3.backward(vec![g_o3], params, &mut grads)?);
        phase("encoder2 backward");
        let gv0 = enc2.backward(vec![g_e2], params, &mut grads)?.remove(0);
        phase("decoder4 backward");
        let [g_o5, g_e3] = pair(dec4.backward(vec![g_o4], params, &mut grads)?);
        phase("encoder3 backward");
        let gv1 = enc3.backward(vec![g_e3], params, &mut grads)?.remove(0);
        phase("decoder5 backward");
        let [gv3, g_e4] = pair(dec5.backward(vec![g_o5], params, &mut grads)?);
        phase("encoder4 backward");
        let gv2 = enc4.backward(vec![g_e4], params, &mut grads)?.remove(0);
        phase("vit backward");
        vit.backward([gv0, gv1, gv2, gv3], params, &mut grads)?;
        rng.restore(&after_forward);
        Ok(StepGrads { loss, grads })
    }
}
