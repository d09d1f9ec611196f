// The splat in WebGL: three.js with Spark's renderer, orbit controls, the camera framed on the splat.
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";
import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";

/** The box holding the middle 96% of splat centres along each axis: a few stray splats far out (SfM
 * outliers, background) would otherwise frame the scene as a speck. All centres up to 200k; above, a
 * regular sample. */
function coreBounds(mesh: SplatMesh): THREE.Box3 {
  const all = mesh.getBoundingBox(true);
  const xs: number[] = [];
  const ys: number[] = [];
  const zs: number[] = [];
  let count = 0;
  mesh.forEachSplat(() => void count++);
  const stride = Math.max(1, Math.floor(count / 200_000));
  mesh.forEachSplat((i, c) => {
    if (i % stride === 0) xs.push(c.x), ys.push(c.y), zs.push(c.z);
  });
  if (xs.length < 50) return all;
  const at = (v: number[], q: number) => v[Math.min(v.length - 1, Math.floor(q * v.length))];
  const lo = new THREE.Vector3();
  const hi = new THREE.Vector3();
  [xs, ys, zs].forEach((v, axis) => {
    v.sort((a, b) => a - b);
    lo.setComponent(axis, at(v, 0.02));
    hi.setComponent(axis, at(v, 0.98));
  });
  return new THREE.Box3(lo, hi);
}

export interface Shown {
  gaussians: number;
}

/** Show the splat in ``bytes`` (``fileName`` tells Spark the format: .spz, .splat or .ply) on
 * ``canvas``; resolves once it has been drawn. */
export async function showSplat(canvas: HTMLCanvasElement, bytes: Uint8Array, fileName: string): Promise<Shown> {
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  const background = new THREE.Color(getComputedStyle(canvas).getPropertyValue("--scene-background").trim() || "#111");
  renderer.setClearColor(background, 1);
  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(50, 1, 0.01, 1000);
  scene.add(new SparkRenderer({ renderer }));

  const mesh = new SplatMesh({ fileBytes: bytes, fileName });
  // Splats from COLMAP-based training are y-down, z-forward (OpenCV); three.js is y-up, z-backward:
  // half a turn about x shows them the right way up.
  mesh.quaternion.set(1, 0, 0, 0);
  scene.add(mesh);
  await mesh.initialized;
  mesh.updateMatrixWorld(true);

  const box = coreBounds(mesh).applyMatrix4(mesh.matrixWorld);
  const sphere = box.getBoundingSphere(new THREE.Sphere());
  const radius = Math.max(sphere.radius, 1e-3);
  const distance = radius / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2));
  camera.position.copy(sphere.center).add(new THREE.Vector3(0, radius * 0.3, distance));
  camera.near = distance / 100;
  camera.far = distance * 100;
  camera.lookAt(sphere.center);

  const controls = new OrbitControls(camera, canvas);
  controls.target.copy(sphere.center);
  controls.enableDamping = true;
  controls.update();

  const resize = () => {
    const { clientWidth: w, clientHeight: h } = canvas;
    if (canvas.width !== Math.floor(w * renderer.getPixelRatio()) || canvas.height !== Math.floor(h * renderer.getPixelRatio())) {
      renderer.setSize(w, h, false);
      camera.aspect = w / Math.max(h, 1);
      camera.updateProjectionMatrix();
    }
  };
  let frames = 0;
  let drawn: () => void = () => {};
  const firstFrames = new Promise<void>((resolve) => (drawn = resolve));
  renderer.setAnimationLoop(() => {
    resize();
    controls.update();
    renderer.render(scene, camera);
    // Spark sorts splats in a worker: give it a few frames before calling the picture drawn.
    if (++frames === 10) drawn();
  });
  await firstFrames;
  return { gaussians: mesh.packedSplats?.numSplats ?? 0 };
}
