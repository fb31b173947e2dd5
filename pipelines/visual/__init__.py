"""Visual prompts for the VLM annotator: which frames to show, and how to point at one object.

Ref-SAV's three stages each look at a masklet differently (docs/annotation-pipeline.md):
stage 1 describes the object itself (zoomed crops), stage 2 the object in its scene
(one full frame), stage 3 the object over time (8 frames sampled uniformly where it is
visible). The paper does not say how the target was marked; we default to a
mask-precise contour drawn just *outside* the object, so its own pixels (and so its
colour) reach the VLM untouched.

Flow for one video, decoded once for all its objects:

    plan = plan_video(annotation, k, n)                       # plan: from the RLEs alone, no pixels
    frames = decode_frames(video.path, plan.frames, yuv=True) # refsav.schemas.media: only the frames needed
    views = render_video(annotation, frames, style)           # views: ObjectViews | NotVisible per object

(`views.build_video_views` does all three and names the video file in any SchemaError.)
The other modules: `selection` (which frames), `frames` (decoded frames as images),
`masks` (a mask's box from its RLE), `canvas` (each view before highlighting), `style`
and `highlight` (how the object is marked), `jpeg` (encoding).

Only annotated frames (every 4th in SA-V) are ever chosen: elsewhere there is no mask.
Everything here is deterministic: the same masklet and pixels give the same bytes.
"""
