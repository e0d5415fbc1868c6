"""API-format ComfyUI graphs as "Save (API Format)" exports them (node ids, `_meta` titles, links
`[node_id, slot]`), for the workflow-mapping and backend tests."""

import copy


def _node(cls, title, **inputs):
    return {"inputs": inputs, "class_type": cls, "_meta": {"title": title}}


def controlnet_graph():
    """txt2img through ControlNetApplyAdvanced: the sampler's positive is slot 0, negative slot 1 of node 11."""
    return copy.deepcopy(
        {
            "3": _node(
                "KSampler",
                "KSampler",
                seed=156680208700286,
                steps=20,
                cfg=8.0,
                sampler_name="euler",
                scheduler="normal",
                denoise=1.0,
                model=["4", 0],
                positive=["11", 0],
                negative=["11", 1],
                latent_image=["5", 0],
            ),
            "4": _node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name="v1-5-pruned-emaonly.safetensors"),
            "5": _node("EmptyLatentImage", "Empty Latent Image", width=512, height=512, batch_size=1),
            "6": _node("CLIPTextEncode", "CLIP Text Encode (Prompt)", text="a house by a lake", clip=["4", 1]),
            "7": _node("CLIPTextEncode", "CLIP Text Encode (Prompt)", text="watermark, text", clip=["4", 1]),
            "8": _node("VAEDecode", "VAE Decode", samples=["3", 0], vae=["4", 2]),
            "9": _node("SaveImage", "Save Image", filename_prefix="ControlNet", images=["8", 0]),
            "10": _node(
                "ControlNetLoader", "Load ControlNet Model", control_net_name="control_v11p_sd15_canny.safetensors"
            ),
            "11": _node(
                "ControlNetApplyAdvanced",
                "Apply ControlNet",
                strength=1.0,
                start_percent=0.0,
                end_percent=1.0,
                positive=["6", 0],
                negative=["7", 0],
                control_net=["10", 0],
                image=["12", 0],
            ),
            "12": _node("LoadImage", "Load Image", image="sketch.png"),
        }
    )


def inpaint_graph():
    """InpaintModelConditioning: positive slot 0, negative slot 1, the latent slot 2 (from the image)."""
    return copy.deepcopy(
        {
            "3": _node(
                "KSampler",
                "KSampler",
                seed=5,
                steps=20,
                cfg=8.0,
                sampler_name="euler",
                scheduler="normal",
                denoise=1.0,
                model=["4", 0],
                positive=["11", 0],
                negative=["11", 1],
                latent_image=["11", 2],
            ),
            "4": _node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name="v1-5-pruned-emaonly.safetensors"),
            "6": _node("CLIPTextEncode", "CLIP Text Encode (Prompt)", text="a cat on a sofa", clip=["4", 1]),
            "7": _node("CLIPTextEncode", "CLIP Text Encode (Prompt)", text="blurry", clip=["4", 1]),
            "8": _node("VAEDecode", "VAE Decode", samples=["3", 0], vae=["4", 2]),
            "9": _node("SaveImage", "Save Image", filename_prefix="inpaint", images=["8", 0]),
            "11": _node(
                "InpaintModelConditioning",
                "InpaintModelConditioning",
                noise_mask=True,
                positive=["6", 0],
                negative=["7", 0],
                vae=["4", 2],
                pixels=["12", 0],
                mask=["12", 1],
            ),
            "12": _node("LoadImage", "Load Image", image="photo.png"),
        }
    )


def sdxl_refiner_graph():
    """SDXL base + refiner: two KSamplerAdvanced, two loaders, two encoder pairs; the refiner's
    latent is the base sampler's output."""
    size = dict(width=1024, height=1024)
    return copy.deepcopy(
        {
            "4": _node("CheckpointLoaderSimple", "Load Checkpoint - BASE", ckpt_name="sd_xl_base_1.0.safetensors"),
            "5": _node("EmptyLatentImage", "Empty Latent Image", batch_size=1, **size),
            "6": _node(
                "CLIPTextEncodeSDXL",
                "CLIPTextEncodeSDXL",
                crop_w=0,
                crop_h=0,
                target_width=1024,
                target_height=1024,
                text_g="evening sunset scenery blue sky",
                text_l="evening sunset scenery blue sky",
                clip=["4", 1],
                **size,
            ),
            "7": _node(
                "CLIPTextEncodeSDXL",
                "CLIPTextEncodeSDXL",
                crop_w=0,
                crop_h=0,
                target_width=1024,
                target_height=1024,
                text_g="text, watermark",
                text_l="text, watermark",
                clip=["4", 1],
                **size,
            ),
            "10": _node(
                "KSamplerAdvanced",
                "KSampler (Advanced) - BASE",
                add_noise="enable",
                noise_seed=721897303308196,
                steps=25,
                cfg=8.0,
                sampler_name="euler",
                scheduler="normal",
                start_at_step=0,
                end_at_step=20,
                return_with_leftover_noise="enable",
                model=["4", 0],
                positive=["6", 0],
                negative=["7", 0],
                latent_image=["5", 0],
            ),
            "11": _node(
                "KSamplerAdvanced",
                "KSampler (Advanced) - REFINER",
                add_noise="disable",
                noise_seed=0,
                steps=25,
                cfg=8.0,
                sampler_name="euler",
                scheduler="normal",
                start_at_step=20,
                end_at_step=10000,
                return_with_leftover_noise="disable",
                model=["12", 0],
                positive=["15", 0],
                negative=["16", 0],
                latent_image=["10", 0],
            ),
            "12": _node(
                "CheckpointLoaderSimple", "Load Checkpoint - REFINER", ckpt_name="sd_xl_refiner_1.0.safetensors"
            ),
            "15": _node(
                "CLIPTextEncodeSDXLRefiner",
                "CLIPTextEncodeSDXLRefiner",
                ascore=6.0,
                text="evening sunset scenery blue sky",
                clip=["12", 1],
                **size,
            ),
            "16": _node(
                "CLIPTextEncodeSDXLRefiner",
                "CLIPTextEncodeSDXLRefiner",
                ascore=2.5,
                text="text, watermark",
                clip=["12", 1],
                **size,
            ),
            "17": _node("VAEDecode", "VAE Decode", samples=["11", 0], vae=["12", 2]),
            "19": _node("SaveImage", "Save Image", filename_prefix="sdxl_refiner", images=["17", 0]),
        }
    )
