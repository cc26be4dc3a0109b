//! Image encoders: ResNet-18/34/50 (He et al. 2016) and VGG-11/16 (Simonyan & Zisserman 2015)
//! with torchvision's exact parameter names and layout, so that torchvision weights saved as
//! safetensors load without renaming; and a LeNet-style CNN (LeCun et al. 1998) for small
//! images such as MNIST's 28×28.
//!
//! The encoders return the pooled features before the classifier (ResNet: 512 or 2048; VGG:
//! the 4096 of the second fully connected layer; LeNet: 84). The ResNet stride sits on the 3×3
//! convolution of a bottleneck (torchvision's "v1.5").
//!
//! ```
//! use mm_encoders::image::{Arch, ImageConfig, ImageEncoder};
//! use mm_encoders::{Encoder, Input};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let resnet = ImageEncoder::new(&(vs.root() / "image"), &ImageConfig::new(Arch::Resnet18))?;
//! let images = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
//! let out = resnet.forward_t(&Input::dense(images), false);
//! assert_eq!(out.pooled.size(), [2, 512]);
//! assert!(vs.variables().contains_key("image.layer4.1.bn2.running_var")); // torchvision's name
//! resnet.set_backbone_trainable(false); // fine-tune only what comes after it
//! # Ok::<(), mm_encoders::Error>(())
//! ```

use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Tensor};

use crate::{Backbone, Encoded, Encoder, Error, Input, Result};

/// An image architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// ResNet-18: basic blocks [2, 2, 2, 2], 512 features.
    Resnet18,
    /// ResNet-34: basic blocks [3, 4, 6, 3], 512 features.
    Resnet34,
    /// ResNet-50: bottlenecks [3, 4, 6, 3], 2048 features.
    Resnet50,
    /// VGG-11 (configuration A), 4096 features.
    Vgg11,
    /// VGG-16 (configuration D), 4096 features.
    Vgg16,
    /// LeNet-5 style, for small images (28×28 and up), 84 features.
    Lenet,
}

#[allow(clippy::too_many_arguments)]
fn conv(
    p: nn::Path,
    i: i64,
    o: i64,
    k: i64,
    stride: i64,
    padding: i64,
    bias: bool,
    params: &mut Vec<Tensor>,
) -> nn::Conv2D {
    let c = nn::conv2d(p, i, o, k, nn::ConvConfig { stride, padding, bias, ..Default::default() });
    params.push(c.ws.shallow_clone());
    params.extend(c.bs.iter().map(Tensor::shallow_clone));
    c
}

fn bn(p: nn::Path, c: i64, params: &mut Vec<Tensor>) -> nn::BatchNorm {
    let b = nn::batch_norm2d(p, c, Default::default());
    params.extend(b.ws.iter().chain(b.bs.iter()).map(Tensor::shallow_clone));
    b
}

fn linear(p: nn::Path, i: i64, o: i64, params: &mut Vec<Tensor>) -> nn::Linear {
    let l = nn::linear(p, i, o, Default::default());
    params.push(l.ws.shallow_clone());
    params.extend(l.bs.iter().map(Tensor::shallow_clone));
    l
}

#[derive(Debug)]
struct Block {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Block {
    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (c, b)) in self.convs.iter().enumerate() {
            h = h.apply(c).apply_t(b, bn_train);
            if i < last {
                h = h.relu();
            }
        }
        let skip = match &self.downsample {
            Some((c, b)) => x.apply(c).apply_t(b, bn_train),
            None => x.shallow_clone(),
        };
        (h + skip).relu()
    }
}

/// A ResNet with torchvision's names: `conv1`, `bn1`, `layer{1..4}.{i}.conv{1..3}`,
/// `.bn{1..3}`, `.downsample.{0,1}`, and `fc` when it has a classifier.
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<Block>,
    fc: Option<nn::Linear>,
    features: i64,
    params: Vec<Tensor>,
}

impl ResNet {
    /// ResNet-`depth` (18, 34 or 50) over `in_channels` channels, with a `classes`-way `fc`
    /// head or none.
    pub fn new(
        path: &nn::Path,
        depth: u32,
        in_channels: i64,
        classes: Option<i64>,
    ) -> Result<Self> {
        let (bottleneck, counts) = match depth {
            18 => (false, [2, 2, 2, 2]),
            34 => (false, [3, 4, 6, 3]),
            50 => (true, [3, 4, 6, 3]),
            _ => return Err(Error::Config(format!("resnet depth {depth}: expected 18, 34 or 50"))),
        };
        let mut params = Vec::new();
        let conv1 = conv(path / "conv1", in_channels, 64, 7, 2, 3, false, &mut params);
        let bn1 = bn(path / "bn1", 64, &mut params);
        let expansion = if bottleneck { 4 } else { 1 };
        let mut inplanes = 64;
        let mut layers = Vec::new();
        for (li, (&count, planes)) in counts.iter().zip([64i64, 128, 256, 512]).enumerate() {
            for bi in 0..count {
                let p = path / format!("layer{}", li + 1) / bi;
                let stride = if li > 0 && bi == 0 { 2 } else { 1 };
                let out = planes * expansion;
                let convs = if bottleneck {
                    vec![
                        (
                            conv(&p / "conv1", inplanes, planes, 1, 1, 0, false, &mut params),
                            bn(&p / "bn1", planes, &mut params),
                        ),
                        (
                            conv(&p / "conv2", planes, planes, 3, stride, 1, false, &mut params),
                            bn(&p / "bn2", planes, &mut params),
                        ),
                        (
                            conv(&p / "conv3", planes, out, 1, 1, 0, false, &mut params),
                            bn(&p / "bn3", out, &mut params),
                        ),
                    ]
                } else {
                    vec![
                        (
                            conv(&p / "conv1", inplanes, planes, 3, stride, 1, false, &mut params),
                            bn(&p / "bn1", planes, &mut params),
                        ),
                        (
                            conv(&p / "conv2", planes, planes, 3, 1, 1, false, &mut params),
                            bn(&p / "bn2", planes, &mut params),
                        ),
                    ]
                };
                let downsample = (stride != 1 || inplanes != out).then(|| {
                    let d = &p / "downsample";
                    (
                        conv(&d / 0, inplanes, out, 1, stride, 0, false, &mut params),
                        bn(&d / 1, out, &mut params),
                    )
                });
                layers.push(Block { convs, downsample });
                inplanes = out;
            }
        }
        let fc = classes.map(|c| nn::linear(path / "fc", inplanes, c, Default::default()));
        Ok(ResNet { conv1, bn1, layers, fc, features: inplanes, params })
    }

    /// Size of the pooled features: 512 (ResNet-18, 34) or 2048 (ResNet-50).
    pub fn feature_dim(&self) -> i64 {
        self.features
    }

    /// `[B, C, H, W]` to pooled features `[B, 512 or 2048]`.
    pub fn features(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let mut h = x.apply(&self.conv1).apply_t(&self.bn1, bn_train).relu().max_pool2d(
            [3, 3],
            [2, 2],
            [1, 1],
            [1, 1],
            false,
        );
        for block in &self.layers {
            h = block.forward(&h, bn_train);
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    /// Features, then the `fc` head if there is one.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let f = self.features(x, train);
        match &self.fc {
            Some(fc) => f.apply(fc),
            None => f,
        }
    }
}

/// A VGG with torchvision's names: `features.{i}` (the index counts every convolution, ReLU and
/// pooling of the stack) and `classifier.{0,3,6}`.
#[derive(Debug)]
pub struct Vgg {
    convs: Vec<Option<nn::Conv2D>>,
    fc6: nn::Linear,
    fc7: nn::Linear,
    fc8: Option<nn::Linear>,
    params: Vec<Tensor>,
}

impl Vgg {
    /// VGG-`depth` (11 or 16) with a `classes`-way last layer (`classifier.6`) or none.
    pub fn new(
        path: &nn::Path,
        depth: u32,
        in_channels: i64,
        classes: Option<i64>,
    ) -> Result<Self> {
        const M: i64 = 0;
        let plan: &[i64] = match depth {
            11 => &[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
            16 => &[64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
            _ => return Err(Error::Config(format!("vgg depth {depth}: expected 11 or 16"))),
        };
        let mut params = Vec::new();
        let mut convs = Vec::new();
        let mut index = 0;
        let mut input = in_channels;
        for &c in plan {
            if c == M {
                convs.push(None);
                index += 1;
            } else {
                convs.push(Some(conv(
                    path / "features" / index,
                    input,
                    c,
                    3,
                    1,
                    1,
                    true,
                    &mut params,
                )));
                input = c;
                index += 2; // the convolution and its ReLU
            }
        }
        let fc6 = linear(path / "classifier" / 0, 512 * 7 * 7, 4096, &mut params);
        let fc7 = linear(path / "classifier" / 3, 4096, 4096, &mut params);
        let fc8 = classes.map(|c| nn::linear(path / "classifier" / 6, 4096, c, Default::default()));
        Ok(Vgg { convs, fc6, fc7, fc8, params })
    }

    /// `[B, C, H, W]` (at least 32×32) to the 4096 features of the second fully connected layer.
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for c in &self.convs {
            h = match c {
                Some(c) => h.apply(c).relu(),
                None => h.max_pool2d_default(2),
            };
        }
        let h = h.adaptive_avg_pool2d([7, 7]).flatten(1, -1);
        let h = h.apply(&self.fc6).relu().dropout(0.5, train);
        h.apply(&self.fc7).relu().dropout(0.5, train)
    }

    /// Features, then the last layer if there is one.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let f = self.features(x, train);
        match &self.fc8 {
            Some(fc) => f.apply(fc),
            None => f,
        }
    }
}

/// LeNet-5 style: `conv1` 5×5 (padded) → 6, pool, `conv2` 5×5 → 16, pool, `fc1` → 120, `fc2`
/// → 84. Works from 28×28 up (adaptive pooling to 5×5 before `fc1`).
#[derive(Debug)]
pub struct LeNet {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
    params: Vec<Tensor>,
}

impl LeNet {
    /// A LeNet over `in_channels` channels.
    pub fn new(path: &nn::Path, in_channels: i64) -> Self {
        let mut params = Vec::new();
        let conv1 = conv(path / "conv1", in_channels, 6, 5, 1, 2, true, &mut params);
        let conv2 = conv(path / "conv2", 6, 16, 5, 1, 0, true, &mut params);
        let fc1 = linear(path / "fc1", 16 * 5 * 5, 120, &mut params);
        let fc2 = linear(path / "fc2", 120, 84, &mut params);
        LeNet { conv1, conv2, fc1, fc2, params }
    }

    /// `[B, C, H, W]` to `[B, 84]`.
    pub fn features(&self, x: &Tensor) -> Tensor {
        let h = x.apply(&self.conv1).relu().max_pool2d_default(2);
        let h = h
            .apply(&self.conv2)
            .relu()
            .max_pool2d_default(2)
            .adaptive_avg_pool2d([5, 5])
            .flatten(1, -1);
        h.apply(&self.fc1).relu().apply(&self.fc2).relu()
    }
}

#[derive(Debug)]
enum Net {
    ResNet(ResNet),
    Vgg(Vgg),
    LeNet(LeNet),
}

/// Configuration of an [`ImageEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// The architecture.
    pub arch: Arch,
    /// Input channels (3 for RGB, 1 for greyscale).
    #[serde(default = "three")]
    pub in_channels: i64,
    /// A safetensors file of pretrained weights with torchvision's names (or timm's copies of
    /// them, see [`timm_name`]), loaded by [`crate::EncoderConfig::load_weights`] (the
    /// classifier head is skipped).
    #[serde(default)]
    pub weights: Option<std::path::PathBuf>,
    /// Keep the backbone fixed (and its batch-norm statistics).
    #[serde(default)]
    pub freeze: bool,
    /// Project the output to this size.
    #[serde(default)]
    pub project: Option<i64>,
}

impl ImageConfig {
    /// An architecture over RGB images, nothing else set.
    pub fn new(arch: Arch) -> Self {
        ImageConfig { arch, in_channels: 3, weights: None, freeze: false, project: None }
    }
}

fn three() -> i64 {
    3
}

/// A CNN image encoder: `[B, C, H, W]` to `[B, D]`. The backbone is every layer (all are
/// pretrainable); a frozen backbone keeps its batch-norm statistics.
#[derive(Debug)]
pub struct ImageEncoder {
    net: Net,
    dim: i64,
    backbone: Backbone,
}

impl ImageEncoder {
    /// Builds the network under `path`, without a classifier head.
    pub fn new(path: &nn::Path, config: &ImageConfig) -> Result<Self> {
        if config.in_channels <= 0 {
            return Err(Error::Config(format!(
                "image.in_channels = {}: must be positive",
                config.in_channels
            )));
        }
        let c = config.in_channels;
        let (net, dim) = match config.arch {
            Arch::Resnet18 => (Net::ResNet(ResNet::new(path, 18, c, None)?), 512),
            Arch::Resnet34 => (Net::ResNet(ResNet::new(path, 34, c, None)?), 512),
            Arch::Resnet50 => (Net::ResNet(ResNet::new(path, 50, c, None)?), 2048),
            Arch::Vgg11 => (Net::Vgg(Vgg::new(path, 11, c, None)?), 4096),
            Arch::Vgg16 => (Net::Vgg(Vgg::new(path, 16, c, None)?), 4096),
            Arch::Lenet => (Net::LeNet(LeNet::new(path, c)), 84),
        };
        let params = match &net {
            Net::ResNet(r) => &r.params,
            Net::Vgg(v) => &v.params,
            Net::LeNet(l) => &l.params,
        };
        let backbone = Backbone::new(params.iter().map(Tensor::shallow_clone).collect());
        Ok(ImageEncoder { net, dim, backbone })
    }

    /// The trainable parameters (shallow copies).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.backbone.parameters()
    }

    /// The names of a torchvision checkpoint's tensors this encoder has no place for (its
    /// classifier head), to pass as [`crate::weights::LoadOptions::skip`].
    pub fn head_names(arch: Arch) -> Vec<String> {
        match arch {
            Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 => vec!["fc.".to_string()],
            Arch::Vgg11 | Arch::Vgg16 => vec!["classifier.6.".to_string(), "head.fc.".to_string()],
            Arch::Lenet => vec!["fc3.".to_string()],
        }
    }
}

/// Maps timm's names of torchvision's image weights to ours: timm keeps VGG's first two fully
/// connected layers as 7×7 and 1×1 convolutions (`pre_logits.fc1`, `pre_logits.fc2`, its
/// classifier `head.fc`), the same numbers as torchvision's `classifier.0` and `classifier.3`
/// in another shape. Every other name (all of a ResNet's) is torchvision's already.
///
/// ```
/// use mm_encoders::image::timm_name;
/// use mm_encoders::weights::Mapped;
/// assert_eq!(timm_name("pre_logits.fc1.weight"), Mapped::Reshaped("classifier.0.weight".into()));
/// assert_eq!(timm_name("layer1.0.conv1.weight"), Mapped::To("layer1.0.conv1.weight".into()));
/// ```
pub fn timm_name(name: &str) -> crate::weights::Mapped {
    use crate::weights::Mapped;
    if let Some(rest) = name.strip_prefix("pre_logits.fc1.") {
        Mapped::Reshaped(format!("classifier.0.{rest}"))
    } else if let Some(rest) = name.strip_prefix("pre_logits.fc2.") {
        Mapped::Reshaped(format!("classifier.3.{rest}"))
    } else {
        Mapped::To(name.to_string())
    }
}

impl Encoder for ImageEncoder {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, input: &Input, train: bool) -> Encoded {
        let x = &input.values;
        let pooled = match &self.net {
            Net::ResNet(r) => r.features(x, train && !self.backbone.frozen()),
            Net::Vgg(v) => v.features(x, train),
            Net::LeNet(l) => l.features(x),
        };
        Encoded { pooled, seq: None }
    }

    fn set_backbone_trainable(&self, trainable: bool) {
        self.backbone.set_trainable(trainable);
    }

    fn backbone_parameters(&self) -> Vec<Tensor> {
        self.backbone.parameters()
    }
}

impl ModuleT for ImageEncoder {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        Encoder::forward_t(self, &Input::dense(xs.shallow_clone()), train).pooled
    }
}
